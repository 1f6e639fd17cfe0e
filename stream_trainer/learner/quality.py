"""Prequential quality over a sliding window of recent examples, per domain. Pure numpy.

Every example is scored by the model *before* it learned from it (test-then-train), so
these are honest out-of-sample figures on a changing stream:

- binary tasks (clicks): ``log_loss``, rolling ``auc``, and calibration: the mean
  predicted click rate next to the ``observed_rate`` and their difference;
- forecasts with a direction (ticks): ``mse`` and ``mae`` in raw units (returns), and
  ``directional_accuracy`` (the predicted and actual return have the same sign);
- other regressions (sensors): ``mse`` in raw units, ``normalized_mse`` (in running
  standard deviations, the unit anomaly scores use) and ``anomaly_rate``;
- tabular classification (binary, multiclass): ``log_loss``, ``accuracy`` and
  ``macro_f1``; tabular regressions: ``mse`` and ``mae`` in raw units.

>>> q = Quality("binary", window=4)
>>> q.update(np.array([0.9, 0.2, 0.7, 0.4]), np.array([1.0, 0.0, 1.0, 0.0]), np.zeros(4))
>>> sorted(q.values())
['auc', 'calibration_gap', 'log_loss', 'mean_predicted', 'observed_rate']
>>> q.values()["auc"]
1.0
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from stream_trainer import domains

DEFAULT_WINDOW = 10_000
PROFILES = ("binary", "direction", "regression", "classification", "errors")


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); NaN with a single class.

    >>> auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    0.75
    """
    pos = labels > 0.5
    n_pos = int(pos.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def macro_f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    """The mean of the F1 scores of the classes that occur (predicted or actual); a
    negative prediction is none (a model that could not predict yet), not a class.

    >>> macro_f1(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]))
    0.7777777777777777
    >>> macro_f1(np.array([-1, 1]), np.array([0, 1]))
    0.5
    """
    scores = []
    for c in np.union1d(predicted[predicted >= 0], actual):
        tp = float(np.sum((predicted == c) & (actual == c)))
        denom = float(np.sum(predicted == c) + np.sum(actual == c))
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores)) if scores else math.nan


def classification(probs: np.ndarray, labels: np.ndarray, losses: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy and macro-F1 of probabilities: ``[n, 1]`` (binary, p of 1) or
    ``[n, classes]``; ``labels`` the class indices."""
    if probs.shape[1] == 1:
        predicted = (probs[:, 0] > 0.5).astype(np.int64)
    else:
        predicted = probs.argmax(1)
    actual = labels.astype(np.int64)
    return {
        "log_loss": float(losses.mean()),
        "accuracy": float(np.mean(predicted == actual)),
        "macro_f1": macro_f1(predicted, actual),
    }


def profile_for(kind: str, task: str) -> str:
    """Which metrics fit a pipeline: ``binary`` tasks, else its domain's (``direction``
    for ticks, ``regression`` for the others).

    >>> profile_for("ticks", "regression"), profile_for("sensors", "regression")
    ('direction', 'regression')
    """
    return domains.get(kind).quality_profile(task)


class Quality:
    """Keeps the last ``window`` examples: predictions and targets in raw units, the
    per-example losses, and anomaly flags where the featurizer gives them."""

    def __init__(self, profile: str, window: int = DEFAULT_WINDOW) -> None:
        if profile not in PROFILES:
            raise ValueError(f"quality profile must be one of {PROFILES}, not {profile!r}")
        self.profile = profile
        self.window = window
        self._parts: deque[tuple[np.ndarray, ...]] = deque()
        self._size = 0

    def update(
        self,
        predictions: np.ndarray,
        targets: np.ndarray,
        losses: np.ndarray,
        anomalies: np.ndarray | None = None,
    ) -> None:
        """One batch: ``predictions`` are probabilities (binary) or raw-unit values."""
        n = int(losses.shape[0])
        if n == 0:
            return
        flags = np.zeros(n, bool) if anomalies is None else np.asarray(anomalies, bool)
        part = (
            np.asarray(predictions, np.float64).reshape(n, -1),
            np.asarray(targets, np.float64).reshape(n, -1),
            np.asarray(losses, np.float64).reshape(n),
            flags.reshape(n),
        )
        self._parts.append(part)
        self._size += n
        while self._size - self._parts[0][2].size >= self.window:
            self._size -= self._parts.popleft()[2].size

    def __len__(self) -> int:
        return min(self._size, self.window)

    def _stacked(self) -> tuple[np.ndarray, ...]:
        cols = [np.concatenate(c)[-self.window :] for c in zip(*self._parts, strict=True)]
        return tuple(cols)

    def values(self) -> dict[str, float]:
        """The profile's metrics over the window (empty before the first example)."""
        if not self._parts:
            return {}
        pred, target, loss, flags = self._stacked()
        if self.profile == "binary":
            p, y = pred[:, 0], target[:, 0]
            return {
                "log_loss": float(loss.mean()),
                "auc": auc(p, y),
                "mean_predicted": float(p.mean()),
                "observed_rate": float(y.mean()),
                "calibration_gap": float(p.mean() - y.mean()),
            }
        if self.profile == "classification":
            return classification(pred, target[:, 0], loss)
        err = pred - target
        if self.profile == "errors":
            return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err)))}
        out = {"mse": float(np.mean(err**2))}
        if self.profile == "direction":
            out["mae"] = float(np.mean(np.abs(err)))
            out["directional_accuracy"] = float(
                np.mean(np.sign(pred[:, 0]) == np.sign(target[:, 0]))
            )
        else:
            out["normalized_mse"] = float(loss.mean())
            out["anomaly_rate"] = float(flags.mean())
        return out
