"""The challenger and reset_model drift actions."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from fakes import ListSink, ListSource, run_until, tick_batch, tick_learner

from stream_trainer.config import parse_settings
from stream_trainer.drift.challenger import DROPPED, PROMOTED, ChallengerRace
from stream_trainer.drift.policy import AdaptationPolicy
from stream_trainer.learner import Learner
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.producers import make_generator


def learner(lr: float = 0.05) -> Learner:
    return tick_learner(lr)


def batch(n: int = 64, seed: int = 0):
    return tick_batch(n, seed, coef=0.8)


def test_reset_model_goes_back_to_the_initial_weights_and_forgets_the_optimizer():
    a = learner()
    start = {k: v.clone() for k, v in a.model.state_dict().items()}
    for i in range(5):
        a.step(*batch(seed=i))
    assert any(not torch.equal(start[k], v) for k, v in a.model.state_dict().items())
    AdaptationPolicy(["reset_model"]).on_drift(a)
    assert all(torch.equal(start[k], v) for k, v in a.model.state_dict().items())
    fresh = learner().optimizer.state_dict()  # Adagrad's sums start at ADAGRAD_INITIAL
    for name, part in a.optimizer.state_dict().items():
        for key, st in part["state"].items():
            for k, v in st.items():
                assert torch.equal(
                    torch.as_tensor(v), torch.as_tensor(fresh[name]["state"][key][k])
                )


def test_a_challenger_that_learns_the_new_concept_is_promoted():
    champion = learner()
    race = ChallengerRace(champion.spawn, window=256, margin=0.05, patience=4096)
    race.start()
    outcome = None
    for i in range(40):
        inputs, y = batch(seed=i)
        # the champion is stuck on an old concept: its losses stay high
        outcome = race.step(inputs, y, champion_losses=np.full(64, 1.0))
        if outcome:
            break
    assert outcome is not None and outcome[0] == PROMOTED and isinstance(outcome[1], Learner)
    assert race.promotions == 1 and not race.active
    assert outcome[1] is not champion and outcome[1].updates > 0


def test_a_challenger_that_never_wins_is_dropped_after_its_patience():
    race = ChallengerRace(learner().spawn, window=128, margin=0.0, patience=512)
    race.start()
    outcomes = [race.step(*batch(seed=i), champion_losses=np.zeros(64)) for i in range(8)]
    assert outcomes[-1] == (DROPPED, None) and all(o is None for o in outcomes[:-1])
    assert race.drops == 1 and not race.active


def test_race_state_round_trip_continues_identically():
    a = ChallengerRace(learner().spawn, window=256, margin=0.05, patience=4096)
    a.start()
    for i in range(3):
        a.step(*batch(seed=i), champion_losses=np.zeros(64))
    b = ChallengerRace(learner().spawn, window=256, margin=0.05, patience=4096)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # as a checkpoint would: no aliasing
    assert b.active and b.seen == a.seen == 192
    for i in range(3, 6):
        oa = a.step(*batch(seed=i), champion_losses=np.zeros(64))
        ob = b.step(*batch(seed=i), champion_losses=np.zeros(64))
        assert (oa is None) == (ob is None)
    pairs = zip(a.challenger.model.parameters(), b.challenger.model.parameters(), strict=True)
    for p, q in pairs:
        assert torch.equal(p, q)


def test_unknown_or_inconsistent_settings_are_refused():
    with pytest.raises(ValueError, match="unknown drift actions"):
        AdaptationPolicy(["rewind_time"])
    with pytest.raises(ValueError, match="window"):
        ChallengerRace(learner().spawn, window=100, patience=50)


class Outcomes(PipelineHooks):
    def __init__(self) -> None:
        self.drifts, self.outcomes = 0, []

    def on_drift(self, detector: str, timestamp: float) -> None:
        self.drifts += 1

    def on_challenger(self, outcome: str) -> None:
        self.outcomes.append(outcome)


def test_pipeline_races_a_challenger_after_drift_and_checkpoints_it(tmp_path):
    def settings(every: float):
        return parse_settings(
            {
                "checkpoint": {"dir": str(tmp_path), "every_seconds": every},
                "device": "cpu",
                "pipelines": [
                    {
                        "name": "p",
                        "kind": "clicks",
                        "topics": ["t"],
                        "batch": {"max_size": 64, "max_latency_ms": 0},
                        "drift": {
                            "detector": "page_hinkley",
                            "actions": ["challenger"],
                            "challenger_window": 1024,
                            "challenger_patience": 4096,
                        },
                    }
                ],
            }
        )

    stream = [
        json.dumps(e).encode()
        for e in make_generator("clicks", seed=6, count=60_000, drift_at=50_000)
    ]
    s = settings(60)
    hooks = Outcomes()
    p = Pipeline(s, s.pipelines[0], hooks=hooks)
    src, sink = ListSource({("t", 0): stream}, {}, batch=256), ListSink()
    run_until(p, src, sink)
    assert hooks.drifts >= 1
    race = p.policy.race
    # every race that ended was counted, and the counts survive in the checkpoint
    assert len(hooks.outcomes) == race.promotions + race.drops
    assert hooks.outcomes  # at least one race ended
    assert set(hooks.outcomes) <= {PROMOTED, DROPPED}
    restored = Pipeline(s, s.pipelines[0])
    assert restored.restore()
    assert restored.policy.race.promotions == race.promotions
    assert restored.policy.race.active == race.active
    assert restored.learner.updates == p.learner.updates
    pairs = zip(p.learner.model.parameters(), restored.learner.model.parameters(), strict=True)
    for a, b in pairs:
        assert torch.equal(a, b)
