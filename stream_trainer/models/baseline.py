"""Running baselines the built-in heads predict on top of, and the trivial experts they
offer the mixture (:mod:`stream_trainer.learner.mixture`). Pure numpy.

A baseline sees each batch's targets only after it gave every row its value, and row
``j`` of a batch sees the targets of rows ``< j`` (exactly what one event at a time would
give, vectorised). The head adds the baseline's ``offsets`` to its learned output, which
starts at zero, so a fresh model (a cold start, ``reset_model``, a challenger) predicts
the baseline and moves away from it only as evidence accrues.

- clicks: the base rate, the running mean ``(clicks + 1) / (events + 2)``; the head's
  offset is the logit of a slowly forgetting one (``recent_rate``, a drifting base rate),
  and both are experts: ``constant_rate`` over every event is exactly the baseline
  ``evaluate`` holds us to, so the mixture can always fall back on it;
- ticks: zero return (returns carry little signal; a running mean of them costs more in
  noise than it gains); experts: zero return and the last return;
- sensors: persistence, the last reading of the window; expert: the last value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

OFFSET = "__baseline__"  # the input the learner adds the offsets under (never the model's)
RATE_HALF_LIFE = 50_000  # events: the click rate forgets slowly (a drifting base rate)


class Baseline(Protocol):
    """What a head's running baseline offers the learner."""

    experts: tuple[str, ...]  # the trivial experts' names, in the order of ``predict``
    # experts that, like the model, must earn their weight in the mixture (they start at
    # its small prior); the others are the trivial baselines ``evaluate`` holds us to
    candidates: tuple[str, ...]

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """(offsets in model units, or None; the experts' predictions ``[rows, K, ...]``
        in prediction units: probabilities for binary tasks). The first ``n`` rows are
        sequential events whose ``targets`` are given; later rows (replay) see the state
        after them. Call :meth:`commit` to keep the state the ``n`` targets lead to."""
        ...

    def commit(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def discounted_prefix(
    x: np.ndarray, start: np.ndarray | float, gamma: float
) -> tuple[np.ndarray, np.ndarray]:
    """``a[j] = gamma * a[j-1] + x[j-1]``, ``a[0] = start``, over the rows of ``x``:
    (the value before each row, the value after the last). Vectorised: one cumsum.

    >>> before, end = discounted_prefix(np.array([1.0, 1.0, 1.0]), 0.0, 0.5)
    >>> before.tolist(), float(end)
    ([0.0, 1.0, 1.5], 1.75)
    """
    n = x.shape[0]
    start = np.asarray(start, np.float64)
    if n == 0:
        return np.empty((0, *start.shape)), start.copy()
    shape = (n,) + (1,) * (x.ndim - 1)
    j = np.arange(n, dtype=np.float64).reshape(shape)
    # chunks keep gamma**-j finite for any batch size and half-life
    chunk = max(1, int(200.0 / max(-math.log(gamma), 1e-300))) if gamma < 1 else n
    if n > chunk:
        b1, mid = discounted_prefix(x[:chunk], start, gamma)
        b2, end = discounted_prefix(x[chunk:], mid, gamma)
        return np.concatenate([b1, b2]), end
    scaled = x * gamma ** -(j + 1)
    c = np.cumsum(scaled, axis=0)
    excl = np.concatenate([np.zeros((1, *x.shape[1:])), c[:-1]])
    before = gamma**j * (start + excl)
    end = gamma**n * (start + c[-1])
    return before, end


def _gamma(half_life: float) -> float:
    return 0.5 ** (1.0 / half_life) if half_life and math.isfinite(half_life) else 1.0


class RateBaseline:
    """The running click rate ``(clicks + 1) / (events + 2)`` (Laplace's rule), twice:
    over every event (``constant_rate``: the baseline ``evaluate`` runs, exactly), and
    over slowly forgotten counts (``recent_rate``, half-life ``half_life`` events), whose
    logit is the offset the head learns on top of."""

    experts = ("constant_rate", "recent_rate")
    candidates = ("recent_rate",)

    def __init__(self, half_life: float = RATE_HALF_LIFE) -> None:
        self.gamma = _gamma(half_life)
        self.counts = np.zeros(2)  # discounted (events, clicks)
        self.totals = np.zeros(2)  # (events, clicks), all of them
        self._pending: tuple[np.ndarray, np.ndarray] | None = None

    def rate(self, counts: np.ndarray) -> np.ndarray:
        return (counts[..., 1] + 1.0) / (counts[..., 0] + 2.0)

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0]
        if targets is None or n == 0:
            recent = np.broadcast_to(self.counts, (rows, 2))
            total = np.broadcast_to(self.totals, (rows, 2))
            self._pending = None
        else:
            y = np.asarray(targets[:n], np.float64).reshape(n)
            x = np.stack([np.ones(n), y], 1)
            seq, end = discounted_prefix(x, self.counts, self.gamma)
            seq_t, end_t = discounted_prefix(x, self.totals, 1.0)
            recent = np.concatenate([seq, np.broadcast_to(end, (rows - n, 2))])
            total = np.concatenate([seq_t, np.broadcast_to(end_t, (rows - n, 2))])
            self._pending = (end, end_t)
        p = self.rate(recent)
        return np.log(p) - np.log1p(-p), np.stack([self.rate(total), p], 1)

    def commit(self) -> None:
        if self._pending is not None:
            (self.counts, self.totals), self._pending = self._pending, None

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": torch.from_numpy(self.counts.copy()),
            "totals": torch.from_numpy(self.totals.copy()),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"counts", "totals"}:
            raise ValueError(
                f"rate baseline state has keys {sorted(state)}, expected counts, totals"
            )
        for key in ("counts", "totals"):
            value = np.asarray(state[key], np.float64)
            if value.shape != (2,):
                raise ValueError(f"rate baseline {key} has shape {value.shape}, expected (2,)")
            setattr(self, key, value.copy())


class _Stateless:
    """Baselines read off the inputs: nothing to keep between batches."""

    candidates: tuple[str, ...] = ()

    def commit(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state:
            raise ValueError(f"unexpected baseline state {sorted(state)}")


class ReturnBaseline(_Stateless):
    """Returns: offset zero; experts: zero return and the last return (persistence),
    from the window of normalised returns."""

    experts = ("zero_return", "last_return")

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        last = np.asarray(inputs["window"], np.float64)[:, -1]
        return None, np.stack([np.zeros_like(last), last], 1)


class LastValueBaseline(_Stateless):
    """Readings: persistence, the window's last reading (normalised, as the target is)."""

    experts = ("last_value",)

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        last = np.asarray(inputs["window"], np.float64)[:, -1]
        return last, last[:, None]


class ClassPrior:
    """Multiclass: the running class frequencies (tabular). A class seen ``c`` times has
    weight ``c + 1``, one not seen yet ``1 / classes`` (classes learned as they appear
    must not take mass before they do); the prior is the weights, normalised. Its log is
    the head's offset (logits), and it is the trivial expert ``class_prior``."""

    experts = ("class_prior",)
    candidates: tuple[str, ...] = ()

    def __init__(self, classes: int) -> None:
        self.counts = np.zeros(classes)
        self._pending: np.ndarray | None = None

    def probs(self, counts: np.ndarray) -> np.ndarray:
        w = np.where(counts > 0, counts + 1.0, 1.0 / counts.shape[-1])
        return w / w.sum(-1, keepdims=True)

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0]
        k = self.counts.shape[0]
        if targets is None or n == 0:
            counts = np.broadcast_to(self.counts, (rows, k))
            self._pending = None
        else:
            onehot = np.eye(k)[np.asarray(targets[:n], np.int64).reshape(n)]
            seq, end = discounted_prefix(onehot, self.counts, 1.0)
            counts = np.concatenate([seq, np.broadcast_to(end, (rows - n, k))])
            self._pending = end
        p = self.probs(counts)
        return np.log(p), p[:, None, :]

    def commit(self) -> None:
        if self._pending is not None:
            self.counts, self._pending = self._pending, None

    def state_dict(self) -> dict[str, Any]:
        return {"counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        counts = np.asarray(state.get("counts", ()), np.float64)
        if set(state) != {"counts"} or counts.shape != self.counts.shape:
            raise ValueError(f"class prior state does not fit {self.counts.shape[0]} classes")
        self.counts = counts.copy()


class MeanBaseline(_Stateless):
    """Regressions on targets the featurizer normalised by their running mean and spread
    (tabular): the running mean is zero in those units; offset and expert ``running_mean``."""

    experts = ("running_mean",)

    def predict(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        rows = next(iter(inputs.values())).shape[0]
        return None, np.zeros((rows, 1))
