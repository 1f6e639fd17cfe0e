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
    occurrence_rank,
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
        self._buckets = np.zeros(0, np.int64)  # per state row: its sensor's embedding bucket

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """Per event: read the key's state, then update it (in order: two readings of a
        key in one batch see each other), every sensor at once: numpy over the batch's
        occurrence rounds, on the batch's sensors' statistics taken out of the state
        once. The windows are not shifted round by round: each sensor's readings (its
        window, then the batch's readings as its statistics learn them) lie end to end
        in one buffer, and every window is one gather from it. Normalising and clipping
        happen once, on the whole batch."""
        c, w, n_ev = len(self.channels), self.window, len(events)
        sids = [ev["sensor_id"] for ev in events]
        values = np.array(
            [[ev["values"][ch] for ch in self.channels] for ev in events], np.float64
        ).reshape(n_ev, c)
        a = self.slots.arrays
        rows_ev = self.slots.rows(sids)
        if len(self.slots) > len(self._buckets):
            self._hash_new(rows_ev, sids)
        state, kid = np.unique(rows_ev, return_inverse=True)
        kid = kid.reshape(n_ev)
        n_k = len(state)
        count, means_k, vars_k = a["count"][state], a["mean"][state], a["var"][state]
        # the events in rounds (each sensor's r-th reading in round r), by sensor within
        # a round: while every sensor has an r-th reading, round r is a run of n_k
        # events in sensor order and reads and writes the statistics without gathers
        rank = occurrence_rank(kid)
        order = np.lexsort((kid, rank))
        k_sorted, x_sorted = kid[order], values[order]
        learned = x_sorted.copy()  # each reading as the statistics and the window learn it
        fit = np.empty(n_ev, bool)
        means, variances = np.empty((n_ev, c)), np.empty((n_ev, c))
        ends = np.cumsum(np.bincount(rank))
        seen = np.bincount(kid, minlength=n_k)
        full = int(seen.min()) if n_k else 0
        alpha, robust_k = self.moments.alpha, self.robust_k
        lo = 0
        for r, end in enumerate(ends.tolist()):
            k: Any = slice(None) if r < full else k_sorted[lo:end]
            x, cnt, mean, var = x_sorted[lo:end], count[k], means_k[k], vars_k[k]
            ok = cnt >= WARMUP  # a sensor's first readings only seed it
            fit[lo:end], means[lo:end], variances[lo:end] = ok, mean, var
            bound = robust_k * np.sqrt(var)  # the state learns a spike clipped
            clipped = np.minimum(np.maximum(x, mean - bound), mean + bound)
            x = learned[lo:end] = clipped if ok.all() else np.where(ok[:, None], clipped, x)
            # RunningMoments.update, on the batch's copy of the statistics
            cnt = count[k] = cnt + 1
            wt = np.maximum(alpha, 1.0 / cnt)[:, None]
            delta = x - mean
            means_k[k] = mean + wt * delta
            vars_k[k] = (1 - wt) * (var + wt * delta * delta)
            lo = end
        emit = np.empty(n_ev, bool)
        emit[order] = fit
        means[order], variances[order] = means.copy(), variances.copy()
        learned[order] = learned.copy()
        a["count"][state], a["mean"][state], a["var"][state] = count, means_k, vars_k
        # sensor k's segment of the buffer: its window (oldest first), then its readings
        start = np.cumsum(w + seen) - (w + seen)
        lags = np.arange(w)
        buf = np.empty((int(np.sum(w + seen)), c))
        buf[start[:, None] + lags] = a["readings"][state]
        buf[start[kid] + w + rank] = learned
        a["readings"][state] = buf[(start + seen)[:, None] + lags]
        rows = np.flatnonzero(emit)
        n = len(rows)
        mean = means[rows]
        std = np.sqrt(variances[rows]) + 1e-9
        win = buf[(start[kid[rows]] + rank[rows])[:, None] + lags]  # the readings before
        win = np.where(np.isnan(win), mean[:, None, :], win)
        windows = np.clip((win - mean[:, None, :]) / std[:, None, :], -CLIP, CLIP)
        targets = np.clip((values[rows] - mean) / std, -CLIP, CLIP)
        keys = [sids[i] for i in rows.tolist()]
        return FeatureBatch(
            inputs={
                "window": windows.astype(np.float32).reshape(n, w, c),
                "sensor": self._buckets[rows_ev[rows]],
            },
            targets=targets.astype(np.float32).reshape(n, c),
            index=rows.astype(np.int64),
            scale=std.astype(np.float32).reshape(n, c),
            shift=mean.astype(np.float32).reshape(n, c),
            keys=keys,
        )

    def _hash_new(self, rows: np.ndarray, sids: Sequence[str]) -> None:
        """The embedding bucket of each state row that has none yet (new sensors)."""
        have = len(self._buckets)
        buckets = np.zeros(len(self.slots), np.int64)
        buckets[:have] = self._buckets
        for i in np.flatnonzero(rows >= have).tolist():
            buckets[rows[i]] = stable_hash(sids[i], self.sensor_buckets)
        self._buckets = buckets

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
        keys = list(self.slots.slot)  # in row order: rows are given out in order
        self._buckets = np.zeros(0, np.int64)
        self._hash_new(np.arange(len(keys)), keys)
