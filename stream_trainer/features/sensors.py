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

from stream_trainer.features.base import FeatureBatch, KeyedSlots, RunningMoments, stable_hash

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
