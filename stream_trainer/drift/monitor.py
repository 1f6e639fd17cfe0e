"""Watch the per-event loss (and the inputs) with a river detector on a calibrated signal.

The detectors never see raw losses: :class:`~stream_trainer.drift.signal.BlockSignal`
turns the per-event values into one z-score per block of events, standardised against
a slowly moving reference, so that one set of thresholds means the same false-alarm
rate in every domain (see that module for why). What each detector is fed:

* ``page_hinkley`` (the default): the z-score, with ``delta`` and ``threshold`` in
  standard deviations: a one-sided CUSUM for a rise in loss;
* ``adwin``: the z-score clipped to ±4 and mapped to [0, 1], the range its bound is for;
* ``kswin``: the z-score (a two-sample Kolmogorov-Smirnov test is scale-free anyway);
* ``ddm``, ``eddm``, ``hddm_a``, ``hddm_w``: an error indicator per block — "the block's
  loss is more than one reference standard deviation above the reference" — which under
  a stable stream is a Bernoulli variable with a known rate (≈ 0.16), the kind of input
  these detectors are built for.

A detection of the two-sided ADWIN and KSWIN counts only when the recent signal is above
the reference (loss going up, not a model improving); then the detector and the
reference restart for the new regime.

:class:`InputDriftMonitor` does the same for the inputs: per float input column, the
block mean and mean magnitude, combined per block into one normal score (the largest
|z| of all columns, Šidák-corrected for their number), watched by PageHinkley.

State for checkpoints is the reference (a few floats) and the detector's signal since
its last restart: replaying it into fresh river objects rebuilds them exactly, with
nothing pickled (checkpoints are loaded weights-only).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from river import drift
from river.drift import binary

from stream_trainer.drift.signal import BlockSignal, max_abs_score

Z_CLIP = 4.0
ERROR_Z = 1.0  # a block "errs" for the binary detectors when its z-score is above this

# Defaults in units of the calibrated signal (standard deviations of a block's mean).
# Chosen with `stream-trainer evaluate --study drift-suite` (docs/results/drift-detection.md).
DETECTORS: dict[str, Callable[..., Any]] = {
    "page_hinkley": lambda **p: drift.PageHinkley(
        **{"mode": "up", "delta": 1.0, "threshold": 10.0, "min_instances": 8, **p}
    ),
    "adwin": lambda **p: drift.ADWIN(**{"delta": 0.002, "clock": 1, **p}),
    "kswin": lambda **p: drift.KSWIN(
        **{"alpha": 1e-5, "window_size": 100, "stat_size": 30, "seed": 0, **p}
    ),
    "ddm": lambda **p: binary.DDM(**{"warm_start": 30, "drift_threshold": 3.0, **p}),
    "eddm": lambda **p: binary.EDDM(**p),
    "hddm_a": lambda **p: binary.HDDMA(**{"drift_confidence": 1e-4, **p}),
    "hddm_w": lambda **p: binary.HDDMW(**{"drift_confidence": 1e-4, **p}),
}
BINARY = frozenset({"ddm", "eddm", "hddm_a", "hddm_w"})
TWO_SIDED = frozenset({"adwin", "kswin"})


def make_detector(name: str, params: Mapping[str, Any] | None = None) -> Any:
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown drift detector {name!r}; one of {sorted(DETECTORS)}") from None
    try:
        return factory(**dict(params or {}))
    except TypeError as err:
        raise ValueError(f"drift detector {name!r}: bad parameters: {err}") from None


def feed_value(detector: str, z: float) -> float:
    """What ``detector`` is fed for a block with z-score ``z``."""
    if detector == "adwin":
        return (max(-Z_CLIP, min(Z_CLIP, z)) + Z_CLIP) / (2 * Z_CLIP)
    if detector in BINARY:
        return float(z > ERROR_Z)
    return z


class _Watch:
    """One detector over one stream of block scores, restarted after each detection."""

    def __init__(self, detector: str, params: Mapping[str, Any] | None, recent: int, history: int):
        self.name = detector
        self.params = dict(params or {})
        make_detector(detector, self.params)  # fail early on bad parameters
        self.recent_n = recent
        self.history: deque[float] = deque(maxlen=history)
        self.restart()

    def restart(self) -> None:
        self.detector = make_detector(self.name, self.params)
        self.history.clear()
        self.recent: deque[float] = deque(maxlen=self.recent_n)

    def feed(self, z: float) -> bool:
        self.history.append(z)
        self.recent.append(z)
        self.detector.update(feed_value(self.name, z))
        if not self.detector.drift_detected:
            return False
        # PageHinkley ("up") and the binary detectors only test for a rise; ADWIN and
        # KSWIN test both ways, and a fall (a model improving) is no drift
        return self.name not in TWO_SIDED or sum(self.recent) / len(self.recent) > 0

    def replay(self, scores: list[float]) -> None:
        self.restart()
        for z in scores:
            self.feed(z)


class DriftMonitor:
    """``update(losses)`` (one per event) returns True when the loss rose: a drift.

    >>> rng = np.random.default_rng(0)
    >>> m = DriftMonitor("page_hinkley")
    >>> any(m.update(rng.gamma(2.0, 0.25, 1000)) for _ in range(300))  # 300k stable events
    False
    >>> any(m.update(rng.gamma(2.0, 0.3, 1000)) for _ in range(10))  # loss up 20%
    True
    """

    def __init__(
        self,
        detector: str,
        params: Mapping[str, Any] | None = None,
        *,
        block: int = 250,
        warmup: int = 16,
        half_life: float = 64.0,
        recent: int = 4,
        max_history: int = 4096,
    ) -> None:
        self.detector_name = detector
        self.signal = BlockSignal(block, warmup, half_life)
        self.watch = _Watch(detector, params, recent, max_history)
        self.detections = 0

    @property
    def history(self) -> deque[float]:
        return self.watch.history

    def update(self, losses: np.ndarray | float) -> bool:
        """Feed one update's per-event losses (non-finite ones are ignored)."""
        fired = False
        for z in self.signal.push(np.atleast_1d(np.asarray(losses, dtype=np.float64))):
            if self.watch.feed(z):
                fired = True
                self.detections += 1
                self.signal.reset()  # the reference restarts on the new regime's blocks
                self.watch.restart()
        return fired

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector_name,
            "detections": self.detections,
            "signal": torch.tensor(self.signal.state(), dtype=torch.float64),
            "history": torch.tensor(list(self.watch.history), dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["detector"] != self.detector_name:
            raise ValueError(
                f"drift detector changed: checkpoint {state['detector']!r}, "
                f"config {self.detector_name!r}"
            )
        if "signal" in state:
            self.signal.load(state["signal"].numpy())
            self.watch.replay(state["history"].tolist())
        else:  # a checkpoint from before the block signal: start the reference afresh
            self.signal.reset()
            self.watch.restart()
        self.detections = int(state["detections"])


def input_columns(inputs: Mapping[str, Any], limit: int = 64) -> np.ndarray | None:
    """Per event, the float input features worth watching: for a ``[n, k]`` input its k
    values and magnitudes, for ``[n, window, channels]`` each channel's mean and mean
    magnitude over the window. Integer inputs (hashed ids) are left out. None when the
    featurizer has no float inputs."""
    cols: list[np.ndarray] = []
    for name in sorted(inputs):
        x = np.asarray(inputs[name])
        if x.dtype.kind != "f" or x.ndim == 0 or x.shape[0] == 0:
            continue
        n = x.shape[0]
        if x.ndim <= 2:
            x = x.reshape(n, -1)
            cols += [x, np.abs(x)]
        else:
            x = x.reshape(n, -1, x.shape[-1])
            cols += [x.mean(axis=1), np.abs(x).mean(axis=1)]
    if not cols:
        return None
    return np.concatenate(cols, axis=1)[:, :limit].astype(np.float64)


class InputDriftMonitor:
    """``update(inputs)`` returns True when the distribution of the float inputs moved.

    >>> rng = np.random.default_rng(1)
    >>> m = InputDriftMonitor()
    >>> batch = lambda mu: {"x": rng.normal(mu, 1.0, (500, 6)).astype(np.float32)}
    >>> any(m.update(batch(0.0)) for _ in range(400))  # 200k stable events
    False
    >>> any(m.update(batch(0.3)) for _ in range(10))
    True
    """

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        *,
        block: int = 250,
        warmup: int = 16,
        half_life: float = 64.0,
        max_history: int = 4096,
    ) -> None:
        self.block, self.warmup, self.half_life = block, warmup, half_life
        self.signal: BlockSignal | None = None
        self.watch = _Watch("page_hinkley", params, 1, max_history)
        self.detections = 0

    def update(self, inputs: Mapping[str, Any]) -> bool:
        x = input_columns(inputs)
        if x is None:
            return False
        if self.signal is None or self.signal.columns != x.shape[1]:
            self.signal = BlockSignal(self.block, self.warmup, self.half_life, columns=x.shape[1])
            self.watch.restart()
        fired = False
        for z in self.signal.push(x):
            if self.watch.feed(max_abs_score(z)):
                fired = True
                self.detections += 1
                self.signal.reset()
                self.watch.restart()
        return fired

    def state_dict(self) -> dict[str, Any]:
        s = self.signal
        return {
            "detections": self.detections,
            "columns": s.columns if s is not None else 0,
            "signal": torch.tensor(s.state() if s is not None else [], dtype=torch.float64),
            "history": torch.tensor(list(self.watch.history), dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        columns = int(state["columns"])
        self.signal = None
        if columns:
            self.signal = BlockSignal(self.block, self.warmup, self.half_life, columns=columns)
            self.signal.load(state["signal"].numpy())
        self.watch.replay(state["history"].tolist())
        self.detections = int(state["detections"])
