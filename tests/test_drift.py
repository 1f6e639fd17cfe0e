from __future__ import annotations

import random

import pytest
import torch

from stream_trainer.drift import AdaptationPolicy, DriftMonitor, make_detector


def stream(seed: int, n_stable: int = 400, n_drift: int = 200, jump: float = 0.08):
    rnd = random.Random(seed)
    learning = [0.9 - 0.4 * i / 100 + rnd.gauss(0, 0.03) for i in range(100)]
    stable = [0.5 + rnd.gauss(0, 0.03) for _ in range(n_stable)]
    drifted = [0.5 + jump + rnd.gauss(0, 0.03) for _ in range(n_drift)]
    return learning + stable, drifted


@pytest.mark.parametrize("detector", ["page_hinkley", "kswin"])
def test_detects_a_rise_in_loss_but_not_learning_or_noise(detector):
    before, after = stream(1)
    m = DriftMonitor(detector)
    assert not any(m.update(x) for x in before)  # the falling loss of learning is no drift
    hits = [i for i, x in enumerate(after) if m.update(x)]
    assert hits and hits[0] < 100, hits


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "kswin"])
def test_no_false_alarms_on_a_stable_loss(detector):
    rnd = random.Random(4)
    m = DriftMonitor(detector)
    assert not any(m.update(0.5 + rnd.gauss(0, 0.03)) for _ in range(3000))


def test_a_fall_in_loss_is_not_drift():
    before, _ = stream(2)
    m = DriftMonitor("adwin")
    for x in before:
        m.update(x)
    assert not any(m.update(0.3) for _ in range(300))


def test_non_finite_losses_are_ignored():
    m = DriftMonitor("page_hinkley")
    assert not m.update(float("nan")) and not m.update(float("inf"))
    assert len(m.history) == 0


def test_state_round_trip_gives_identical_decisions(tmp_path):
    before, after = stream(3)
    a = DriftMonitor("page_hinkley")
    for x in before[:450]:
        a.update(x)
    torch.save(a.state_dict(), tmp_path / "d.pt")
    b = DriftMonitor("page_hinkley")
    b.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    rest = before[450:] + after
    assert [a.update(x) for x in rest] == [b.update(x) for x in rest]
    assert a.detections == b.detections


def test_bad_detector_parameters_are_a_clear_error():
    with pytest.raises(ValueError, match="bad parameters"):
        make_detector("adwin", {"deltaa": 1})
    with pytest.raises(ValueError, match="unknown drift detector"):
        make_detector("cusum")


class FakeLearner:
    def __init__(self) -> None:
        self.resets, self.m = 0, 1.0

    def reset_optimizer(self) -> None:
        self.resets += 1

    def set_lr_multiplier(self, m: float) -> None:
        self.m = m


def test_policy_resets_and_boost_decays_back():
    p = AdaptationPolicy(["reset_optimizer", "boost_lr"], boost_factor=4.0, boost_updates=3)
    learner = FakeLearner()
    p.on_drift(learner)
    assert learner.resets == 1 and learner.m == 4.0
    seen = []
    for _ in range(5):
        p.after_update(learner)
        seen.append(learner.m)
    assert seen == [3.0, 2.0, 1.0, 1.0, 1.0]
