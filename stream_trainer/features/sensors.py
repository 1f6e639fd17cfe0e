"""Sensor featurizer: per-sensor online-normalised window of readings -> next reading.

Each channel is normalised by the sensor's running mean/std *before* the reading is
folded in, so the target is a forecast in units of that sensor's own spread; the
forecast error in those units is the anomaly score. A sensor's first two readings
only seed its statistics. Readings are winsorised at ``robust_k`` running stds
before they enter the statistics and the window, so one spike neither inflates
the spread (masking the next spike) nor derails the next forecasts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import (
    FeatureBatch,
    KeyedSlots,
    RunningMoments,
    occurrence_rounds,
    stable_hash,
)

CLIP = 10.0
WARMUP = 2


class SensorFeaturizer:
    task = "regression"

    def __init__(
        self,
        channels: Sequence[str] = ("temp", "humidity", "pressure"),
        window: int = 16,
        sensor_buckets: int = 4096,
        alpha: float = 0.005,
        anomaly_threshold: float = 4.0,
        robust_k: float = 5.0,
    ) -> None:
        self.channels = tuple(channels)
        self.window = window
        self.sensor_buckets = sensor_buckets
        self.anomaly_threshold = anomaly_threshold
        self.robust_k = robust_k
        self.moments = RunningMoments(alpha)
        c = len(self.channels)
        self.input_spec = {"window": window, "channels": c, "sensor_buckets": sensor_buckets}
        self.slots = KeyedSlots(
            readings=((window, c), math.nan), mean=((c,), 0.0), var=((c,), 0.0), count=((), 0.0)
        )
        self._buckets: dict[str, int] = {}  # sensor -> its embedding bucket

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """Per event: read the key's state, then update it (in order: two readings of a
        key in one batch see each other), every sensor at once: numpy over the batch's
        occurrence rounds. Normalising and clipping happen once, on the whole batch."""
        c, w, n_ev = len(self.channels), self.window, len(events)
        sids = [ev["sensor_id"] for ev in events]
        values = np.array(
            [[ev["values"][ch] for ch in self.channels] for ev in events], np.float64
        ).reshape(n_ev, c)
        slot = self.slots.rows(sids)
        a = self.slots.arrays
        emit = np.zeros(n_ev, bool)
        raw_win, means, variances = np.empty((n_ev, w, c)), np.empty((n_ev, c)), np.empty((n_ev, c))
        for idx in occurrence_rounds(slot):
            s, x = slot[idx], values[idx]
            fit = a["count"][s] >= WARMUP  # a sensor's first readings only seed it
            if fit.any():
                i, sf = idx[fit], s[fit]
                mean, var = a["mean"][sf], a["var"][sf]
                emit[i] = True
                raw_win[i], means[i], variances[i] = a["readings"][sf], mean, var
                k = self.robust_k * np.sqrt(var)  # the state learns a spike clipped
                x = x.copy()
                x[fit] = np.minimum(np.maximum(x[fit], mean - k), mean + k)
            a["readings"][s] = np.concatenate([a["readings"][s, 1:], x[:, None, :]], axis=1)
            self.moments.update(self.slots, s, x)
        rows = np.flatnonzero(emit)
        n = len(rows)
        mean = means[rows]
        std = np.sqrt(variances[rows]) + 1e-9
        win = raw_win[rows]
        win = np.where(np.isnan(win), mean[:, None, :], win)
        windows = np.clip((win - mean[:, None, :]) / std[:, None, :], -CLIP, CLIP)
        targets = np.clip((values[rows] - mean) / std, -CLIP, CLIP)
        keys = [sids[i] for i in rows.tolist()]
        return FeatureBatch(
            inputs={
                "window": windows.astype(np.float32).reshape(n, w, c),
                "sensor": np.fromiter((self._bucket(k) for k in keys), np.int64, n),
            },
            targets=targets.astype(np.float32).reshape(n, c),
            index=rows.astype(np.int64),
            scale=std.astype(np.float32).reshape(n, c),
            shift=mean.astype(np.float32).reshape(n, c),
            keys=keys,
        )

    def _bucket(self, sensor: str) -> int:
        b = self._buckets.get(sensor)
        if b is None:
            b = self._buckets[sensor] = stable_hash(sensor, self.sensor_buckets)
        return b

    def annotate(self, out: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
        """Anomaly score: RMS forecast error across channels, in running-std units."""
        score = np.sqrt(np.mean((out - targets) ** 2, axis=1))
        return {"anomaly_score": score, "anomaly": score > self.anomaly_threshold}

    def state_dict(self) -> dict[str, Any]:
        return {
            "channels": list(self.channels),
            "window": self.window,
            "slots": self.slots.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["channels"]) != list(self.channels) or state["window"] != self.window:
            raise ValueError(
                f"sensor channels/window changed: checkpoint has "
                f"{list(state['channels'])}/{state['window']}, config has "
                f"{list(self.channels)}/{self.window}"
            )
        self.slots.load_state_dict(state["slots"])
