"""Watch the loss stream with a river detector; report only changes for the worse.

River's detectors are built for bounded signals (ADWIN's bound assumes values in
[0, 1]) and for one scale of noise; raw losses are neither, so fed directly they
either never fire or fire all the time. The monitor therefore feeds them a
*standardised* signal: each update's batch-mean loss as a z-score against a slow
reference (exponentially weighted mean and variance of past batch losses), clipped
to [-4, 4] and mapped to [0, 1]. A detection counts as drift only when the recent
signal is above the reference (loss going up, not the model improving); then the
detector and the reference restart for the new regime.

State for checkpoints is the history of batch losses since the last restart:
replaying it into fresh objects rebuilds them exactly, with nothing pickled
(checkpoints are loaded weights-only).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch
from river import drift

DETECTORS = {
    "adwin": lambda **p: drift.ADWIN(**{"delta": 0.002, "clock": 8, **p}),
    "page_hinkley": lambda **p: drift.PageHinkley(
        **{"mode": "up", "delta": 0.03, "threshold": 2.0, "min_instances": 10, **p}
    ),
    "kswin": lambda **p: drift.KSWIN(**{"alpha": 0.0001, "window_size": 100, "seed": 0, **p}),
}
Z_CLIP = 4.0


def make_detector(name: str, params: Mapping[str, Any] | None = None) -> Any:
    try:
        factory = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown drift detector {name!r}; one of {sorted(DETECTORS)}") from None
    try:
        return factory(**dict(params or {}))
    except TypeError as err:
        raise ValueError(f"drift detector {name!r}: bad parameters: {err}") from None


class DriftMonitor:
    """``update(batch_loss)`` returns True when the detector fires with the loss going up.

    >>> import random
    >>> rnd = random.Random(0)
    >>> m = DriftMonitor("page_hinkley")
    >>> any(m.update(0.5 + rnd.gauss(0, 0.02)) for _ in range(300))
    False
    >>> any(m.update(0.6 + rnd.gauss(0, 0.02)) for _ in range(30))
    True
    """

    def __init__(
        self,
        detector: str,
        params: Mapping[str, Any] | None = None,
        *,
        warmup: int = 20,
        reference_alpha: float = 0.02,
        recent: int = 5,
        max_history: int = 4096,
    ) -> None:
        self.detector_name = detector
        self.params = dict(params or {})
        self.warmup = warmup
        self.reference_alpha = reference_alpha
        self.recent_n = recent
        self.history: deque[float] = deque(maxlen=max_history)
        self.detections = 0
        make_detector(detector, self.params)  # fail early on bad parameters
        self._reset()

    def _reset(self) -> None:
        self.detector = make_detector(self.detector_name, self.params)
        self.history.clear()
        self.recent: deque[float] = deque(maxlen=self.recent_n)
        self.mean = 0.0
        self.var = 0.0
        self.seen = 0

    def signal(self, loss: float) -> float | None:
        """The standardised value fed to the detector (None during warm-up)."""
        if self.seen < self.warmup:
            return None
        z = (loss - self.mean) / math.sqrt(self.var + 1e-12)
        return (max(-Z_CLIP, min(Z_CLIP, z)) + Z_CLIP) / (2 * Z_CLIP)

    def _feed(self, loss: float) -> bool:
        self.history.append(loss)
        u = self.signal(loss)
        self.seen += 1
        w = max(self.reference_alpha, 1.0 / self.seen)
        delta = loss - self.mean
        self.mean += w * delta
        self.var = (1 - w) * (self.var + w * delta * delta)
        if u is None:
            return False
        self.recent.append(u)
        self.detector.update(u)
        return bool(self.detector.drift_detected) and sum(self.recent) / len(self.recent) > 0.5

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        if self._feed(float(loss)):
            self.detections += 1
            self._reset()
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector_name,
            "detections": self.detections,
            "history": torch.tensor(list(self.history), dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["detector"] != self.detector_name:
            raise ValueError(
                f"drift detector changed: checkpoint {state['detector']!r}, "
                f"config {self.detector_name!r}"
            )
        self._reset()
        for x in state["history"].tolist():
            self._feed(x)
        self.detections = int(state["detections"])
