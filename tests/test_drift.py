from __future__ import annotations

import numpy as np
import pytest
import torch

from stream_trainer.drift import AdaptationPolicy, DriftMonitor, InputDriftMonitor, make_detector

ALL = ["page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w"]


def chunks(values: np.ndarray, rng: np.random.Generator, most: int = 1024):
    """Updates of random sizes, as the adaptive batcher makes them."""
    i = 0
    while i < values.size:
        n = int(rng.integers(1, most + 1))
        yield values[i : i + n]
        i += n


def losses(seed: int, stable: int = 60_000, drifted: int = 10_000, rise: float = 1.25):
    """Skewed per-event losses (gamma): a model learning (mean falling from 1.0 to 0.5),
    then stable, then the mean up by ``rise``."""
    rng = np.random.default_rng(seed)
    learning = rng.gamma(2.0, np.linspace(0.5, 0.25, 20_000))
    return np.concatenate([learning, rng.gamma(2.0, 0.25, stable)]), rng.gamma(
        2.0, 0.25 * rise, drifted
    )


@pytest.mark.parametrize(
    ("detector", "within"),
    [("page_hinkley", 3_000), ("ddm", 3_000), ("hddm_a", 3_000), ("hddm_w", 6_000)]
    + [("adwin", 15_000), ("kswin", 15_000), ("eddm", 15_000)],
)
def test_detects_a_rise_in_loss_but_not_learning_or_noise(detector, within):
    before, after = losses(1, drifted=20_000, rise=1.5)
    rng = np.random.default_rng(0)
    m = DriftMonitor(detector)
    assert not any(m.update(x) for x in chunks(before, rng))  # learning is no drift
    seen, first = 0, None
    for x in chunks(after, rng):
        seen += x.size
        if m.update(x):
            first = seen
            break
    assert first is not None and first < within, first


@pytest.mark.parametrize("detector", ["page_hinkley", "adwin", "kswin", "hddm_a", "hddm_w"])
def test_calibrated_no_false_alarm_in_a_million_stable_events(detector):
    """The signal is standardised: heavy-tailed losses of any scale, in updates of any
    size, give the same (here: no) false alarms."""
    rng = np.random.default_rng(7)
    for scale in (0.01, 30.0):
        m = DriftMonitor(detector)
        stable = rng.lognormal(0.0, 1.0, 500_000) * scale
        assert not any(m.update(x) for x in chunks(stable, rng)), (detector, scale)


def test_a_fall_in_loss_is_not_drift():
    before, _ = losses(2)
    m = DriftMonitor("adwin")
    m.update(before)
    rng = np.random.default_rng(2)
    assert not any(m.update(rng.gamma(2.0, 0.1, 1000)) for _ in range(50))


def test_non_finite_losses_are_ignored():
    m = DriftMonitor("page_hinkley")
    assert not m.update(np.array([np.nan, np.inf, -np.inf]))
    assert m.signal.part_n == 0 and m.signal.blocks == 0


@pytest.mark.parametrize("detector", ["page_hinkley", "kswin", "hddm_w"])
def test_state_round_trip_gives_identical_decisions(tmp_path, detector):
    before, after = losses(3)
    a = DriftMonitor(detector)
    a.update(before[:50_123])
    torch.save(a.state_dict(), tmp_path / "d.pt")
    b = DriftMonitor(detector)
    b.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    rest = np.concatenate([before[50_123:], after, before[:30_000]])
    pieces = np.array_split(rest, 97)
    assert [a.update(x) for x in pieces] == [b.update(x) for x in pieces]
    assert a.detections == b.detections >= 1


def test_input_monitor_sees_a_shift_in_one_feature_not_noise():
    rng = np.random.default_rng(5)

    def batch(shift: float = 0.0) -> dict:
        x = rng.normal(0.0, 1.0, (512, 4, 3)).astype(np.float32)  # [n, window, channels]
        x[:, :, 1] += shift
        return {"window": x, "ids": rng.integers(0, 9, 512)}

    m = InputDriftMonitor()
    assert not any(m.update(batch()) for _ in range(800))  # 400k stable events
    fired = [m.update(batch(0.5)) for _ in range(8)]
    assert any(fired), fired
    assert not any(m.update({"ids": np.arange(10)}) for _ in range(3))  # no float inputs


def test_input_monitor_state_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    xs = [{"x": rng.normal(0.0, 1.0, (300, 5)).astype(np.float32)} for _ in range(120)]
    xs += [{"x": rng.normal(0.4, 1.0, (300, 5)).astype(np.float32)} for _ in range(20)]
    a = InputDriftMonitor()
    for x in xs[:70]:
        a.update(x)
    torch.save(a.state_dict(), tmp_path / "i.pt")
    b = InputDriftMonitor()
    b.load_state_dict(torch.load(tmp_path / "i.pt", weights_only=True))
    assert [a.update(x) for x in xs[70:]] == [b.update(x) for x in xs[70:]]
    assert a.detections == b.detections >= 1


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


def test_a_brief_rise_is_not_hidden_by_its_own_blocks():
    """A learner that re-learns within ~1,000 events (SEA's changes) raises its error only
    briefly; the blocks of that rise must not widen the scale they are tested against
    (the lag), so more such rises are caught than without it, and none is missed that
    the old signal caught."""

    def first_alarm(seed: int, lag: int) -> int | None:
        rng = np.random.default_rng(seed)
        stable = (rng.random(100_000) < 0.11).astype(float)
        rise = (rng.random(1_250) < 0.19).astype(float)  # 0.11 -> 0.19 for 1,250 events
        after = (rng.random(10_000) < 0.11).astype(float)
        m = DriftMonitor("page_hinkley")
        m.signal.lag = lag
        assert not any(m.update(x) for x in np.array_split(stable, 100))
        for k, x in enumerate(np.array_split(np.concatenate([rise, after]), 45)):
            if m.update(x):
                return k
        return None

    old = [first_alarm(s, 0) for s in range(8)]
    new = [first_alarm(s, 8) for s in range(8)]
    assert all(n is not None for o, n in zip(old, new, strict=True) if o is not None)
    assert sum(n is not None for n in new) > sum(o is not None for o in old), (old, new)
    assert all(n < 10 for n in new if n is not None)  # within 10 updates of 250 events


def test_a_checkpoint_from_before_the_lag_still_loads():
    before, after = losses(4)
    a = DriftMonitor("page_hinkley")
    a.update(before)
    old = a.state_dict()
    fixed = 2 + len(a.signal.FIELDS)
    old["signal"] = old["signal"][:fixed]  # no blocks waiting: the old layout
    b = DriftMonitor("page_hinkley")
    b.load_state_dict(old)
    assert b.signal.blocks == a.signal.blocks and not b.signal.pending
    assert any(b.update(x) for x in np.array_split(after, 10))
