"""by_key models take every drift action: a challenger of per-key models, and replay
that sends each key's past rows to that key's model."""

from __future__ import annotations

import json

import torch

from stream_trainer.config import parse_settings
from stream_trainer.learner.keyed import KeyedLearner
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import NullHooks
from stream_trainer.pipeline.ports import Record
from stream_trainer.producers import make_generator


class Outcomes(NullHooks):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_challenger(self, outcome: str) -> None:
        self.seen.append(outcome)


def shard(tmp_path, hooks=None) -> Pipeline:
    s = parse_settings(
        {
            "checkpoint": {"dir": str(tmp_path), "every_seconds": 1e9},
            "device": "cpu",
            "pipelines": [
                {
                    "name": "t",
                    "kind": "ticks",
                    "topics": ["t"],
                    "partitioning": "by_key",
                    "batch": {"max_size": 100, "max_latency_ms": 0},
                    "drift": {
                        "detector": "none",
                        "actions": ["challenger"],
                        "challenger_window": 300,
                        "challenger_margin": 0.0,
                        "challenger_patience": 600,
                    },
                    "replay": {"capacity": 300, "fraction": 0.5},
                }
            ],
        }
    )
    return Pipeline(s, s.pipelines[0], hooks=hooks, shard=("t", 0))


def feed(p: Pipeline, events: list[dict], start: int) -> None:
    for i in range(0, len(events), 100):
        recs = [
            Record("t", 0, start + i + j, 0, None, json.dumps(e).encode())
            for j, e in enumerate(events[i : i + 100])
        ]
        p.handle(recs)
        p.pump()


def test_a_by_key_challenger_races_with_replay_and_survives_a_restart(tmp_path):
    # every symbol flips between momentum and mean reversion at 1,000, where the drift
    # is signalled: the champion's forecasts point the wrong way from then on
    events = list(make_generator("ticks", seed=3, count=3000, n_symbols=3, drift_at=1000))
    hooks = Outcomes()
    p = shard(tmp_path, hooks)
    feed(p, events[:1000], 0)
    assert len(p.replay) == 300 and sorted(p.replay.key_names) == ["SYM0", "SYM1", "SYM2"]
    champion = p.learner
    p.drift_detected()
    challenger = p.policy.race.challenger
    assert isinstance(challenger, KeyedLearner) and challenger.prefix != champion.prefix
    feed(p, events[1000:1200], 1000)
    assert len(challenger.resident) == 3  # a model per key, trained with replayed rows
    assert p.checkpoint(commit=False)
    files = {f.name for f in (p.store.dir / "models").iterdir()}
    assert any(f.startswith(challenger.prefix) for f in files)  # beside, not over, the
    assert any(f.startswith("model-") for f in files)  # champion's files
    # a restart resumes the race with the same challenger models and replay rows
    q = shard(tmp_path)
    assert q.restore()
    assert q.policy.race.active and q.policy.race.challenger.prefix == challenger.prefix
    assert q.replay.key_names == p.replay.key_names
    key = sorted(challenger.files)[0]
    for a, b in zip(
        challenger.model(key).model.parameters(),
        q.policy.race.challenger.model(key).model.parameters(),
        strict=True,
    ):
        assert torch.equal(a, b)
    # the per-key challenger, fresh on the new concept, wins within its patience and
    # replaces the champion (without the change at 1,000 the champion wins: dropped)
    feed(p, events[1200:3000], 1200)
    assert hooks.seen == ["promoted"]
    assert p.learner is challenger and p.policy.race.challenger is None
