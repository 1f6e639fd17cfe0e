"""The per-event tick and sensor featurizers as they were before they were vectorised
(f58923e), frozen: the reference that the batch versions in ``stream_trainer.features``
must equal, feature for feature and state for state (tests/test_features_fast.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import FeatureBatch, KeyedSlots, stable_hash
from stream_trainer.features.sensors import SensorFeaturizer
from stream_trainer.features.ticks import TickFeaturizer

CLIP = 10.0
WARMUP = 2


class RunningMoments:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def update(self, slots: KeyedSlots, row: int, x: np.ndarray, center: bool = True) -> None:
        a = slots.arrays
        a["count"][row] += 1
        w = max(self.alpha, 1.0 / a["count"][row])
        mean = a["mean"][row]
        if center:
            delta = x - mean
            mean += w * delta
            a["var"][row] = (1 - w) * (a["var"][row] + w * delta * delta)
        else:  # zero-mean assumption (returns): var is the mean square
            a["var"][row] = (1 - w) * a["var"][row] + w * x * x


class LegacyTickFeaturizer(TickFeaturizer):
    """Today's settings and state; the per-event featurize and moments of before."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.moments = RunningMoments(self.moments.alpha)

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        a = self.slots.arrays
        rows: list[int] = []
        wins: list[np.ndarray] = []
        targets: list[float] = []
        scales: list[float] = []
        syms: list[int] = []
        keys: list[str] = []
        for i, ev in enumerate(events):
            s = self.slots.get(ev["symbol"])
            a = self.slots.arrays
            last = a["price"][s]
            a["price"][s] = ev["price"]
            if math.isnan(last):
                continue
            r = math.log(ev["price"] / last)
            if a["count"][s] >= 1:
                std = math.sqrt(a["var"][s, 0]) or 1e-8
                rows.append(i)
                wins.append(np.clip(a["returns"][s] / std, -CLIP, CLIP))
                targets.append(max(-CLIP, min(CLIP, r / std)))
                scales.append(std)
                syms.append(stable_hash(ev["symbol"], self.symbol_buckets))
                keys.append(ev["symbol"])
            a["returns"][s, :-1] = a["returns"][s, 1:]
            a["returns"][s, -1] = r
            self.moments.update(self.slots, s, np.array([r]), center=False)
        n = len(rows)
        return FeatureBatch(
            inputs={
                "window": np.asarray(wins, np.float32).reshape(n, self.window),
                "symbol": np.asarray(syms, np.int64),
            },
            targets=np.asarray(targets, np.float32),
            index=np.asarray(rows, np.int64),
            scale=np.asarray(scales, np.float32),
            shift=np.zeros(n, np.float32),
            keys=keys,
        )


class LegacySensorFeaturizer(SensorFeaturizer):
    """Today's settings and state; the per-event featurize and moments of before."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.moments = RunningMoments(self.moments.alpha)

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """Per event: read the key's state, then update it (in order: two readings of a
        key in one batch see each other). Normalising and clipping happen once, on the
        whole batch, after the loop."""
        c, w = len(self.channels), self.window
        rows: list[int] = []
        raw_wins: list[np.ndarray] = []
        raw_x: list[np.ndarray] = []
        means: list[np.ndarray] = []
        variances: list[np.ndarray] = []
        ids: list[int] = []
        keys: list[str] = []
        for i, ev in enumerate(events):
            sid = ev["sensor_id"]
            s = self.slots.get(sid)
            a = self.slots.arrays
            x = np.array([ev["values"][ch] for ch in self.channels], np.float64)
            if a["count"][s] >= WARMUP:
                mean, var = a["mean"][s].copy(), a["var"][s].copy()
                rows.append(i)
                raw_wins.append(a["readings"][s].copy())
                raw_x.append(x)
                means.append(mean)
                variances.append(var)
                ids.append(stable_hash(sid, self.sensor_buckets))
                keys.append(sid)
                k = self.robust_k * np.sqrt(var)  # the state learns a spike clipped
                x = np.minimum(np.maximum(x, mean - k), mean + k)
            a["readings"][s, :-1] = a["readings"][s, 1:]
            a["readings"][s, -1] = x
            self.moments.update(self.slots, s, x)
        n = len(rows)
        if n:
            mean = np.stack(means)
            std = np.sqrt(np.stack(variances)) + 1e-9
            win = np.stack(raw_wins)
            win = np.where(np.isnan(win), mean[:, None, :], win)
            windows = np.clip((win - mean[:, None, :]) / std[:, None, :], -CLIP, CLIP)
            targets = np.clip((np.stack(raw_x) - mean) / std, -CLIP, CLIP)
        else:
            mean = std = targets = np.zeros((0, c))
            windows = np.zeros((0, w, c))
        return FeatureBatch(
            inputs={
                "window": windows.astype(np.float32).reshape(n, w, c),
                "sensor": np.asarray(ids, np.int64),
            },
            targets=targets.astype(np.float32).reshape(n, c),
            index=np.asarray(rows, np.int64),
            scale=std.astype(np.float32).reshape(n, c),
            shift=mean.astype(np.float32).reshape(n, c),
            keys=keys,
        )
