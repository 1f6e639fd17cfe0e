"""A calibrated drift signal: per-event values in, one z-score per block of events out.

River's detectors assume a signal of one known scale: ADWIN's bound holds for values
in [0, 1], PageHinkley's ``delta`` and ``threshold`` are in the signal's units, DDM
expects a Bernoulli error rate. A stream trainer's per-event losses are none of these:
they are skewed, their scale differs per domain and per model, and the batches they
arrive in change size with the event rate. Fed raw, ADWIN at its defaults never fired
on a 1M-event click stream with an abrupt drift, and PageHinkley at its defaults fired
every few thousand events.

So the detectors see a standardised signal instead:

* the values are cut into **blocks of a fixed number of events** (not batches: their
  size follows the arrival rate), and each block's mean is, by the central limit
  theorem, close to normal whatever the per-event distribution;
* each block mean becomes a **z-score against a reference**: an exponentially weighted
  mean and variance of past block means (half-life ``half_life`` blocks, so the
  reference follows a model that is still learning); the scale is the larger of the
  block-to-block spread and the within-block spread / block size. The block-to-block
  spread is estimated from *successive differences* of block means (von Neumann), which
  a trend — a model still learning — barely inflates, where the spread around the
  lagging mean would be dominated by it for many half-lives. The differences are
  winsorised at 6 scales, so one wild block does not inflate it for long (the mean is
  not: clipped, it would lag a learning model's falling loss for thousands of blocks);
* a block joins the reference only ``lag`` blocks after its z-score was taken: the
  blocks of a change must not widen the yardstick they are measured with. Without the
  lag a learner that re-learns within ~1,000 events (river's SEA) raised its error for
  four blocks, and those four blocks, folded in at once, raised the scale (through the
  successive differences and the autocorrelation term) by up to 45% while they were
  being tested: its changes were missed;
* the z-score is *studentised* by the block's own spread: its denominator is the larger
  of the reference scale and the block's within-block standard deviation / √block. A
  block whose mean is high because its events are more dispersed (a volatility burst:
  ticks' squared errors are heavy-tailed) carries less evidence than one whose every
  event got worse; for 0/1 errors the block's own spread barely moves;
* the first ``warmup`` blocks after a (re)start only build the reference.

Under a stable stream the z-scores are then close to N(0, 1) whatever the domain, and
one set of detector thresholds gives a known false-alarm rate (``evaluate --study
drift-suite`` measures it). The state is a handful of floats, so it checkpoints
without pickling.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

WINSOR = 3.0
LAG = 8  # blocks a block waits before it joins the reference


class BlockSignal:
    """``push(values)`` returns one z-score per block the values completed.

    ``values`` is one value per event (shape ``[n]``), or ``columns`` values per event
    (shape ``[n, columns]``), each column with its own reference; the z-scores are
    floats, or arrays of ``columns``.

    >>> rng = np.random.default_rng(0)
    >>> s = BlockSignal(block=100, warmup=10)
    >>> z = s.push(rng.normal(5.0, 2.0, 20_000))  # stable: z-scores ~ N(0, 1)
    >>> len(z), abs(float(np.mean(z))) < 0.3, 0.6 < float(np.std(z)) < 1.4
    (190, True, True)
    >>> float(np.mean(s.push(rng.normal(5.5, 2.0, 1_000)))) > 1.5  # a shift of 0.25 sd
    True
    """

    FIELDS = (
        "mean", "var_block", "var_level", "var_event", "range2", "last",
        "part_sum", "part_sq", "part_max", "part_min",
    )  # fmt: skip
    # set by name from FIELDS (reset, load): one float per column each
    mean: np.ndarray
    var_block: np.ndarray
    var_level: np.ndarray
    var_event: np.ndarray
    range2: np.ndarray
    last: np.ndarray
    part_sum: np.ndarray
    part_sq: np.ndarray
    part_max: np.ndarray
    part_min: np.ndarray
    MAX_RHO = 0.9

    def __init__(
        self,
        block: int = 250,
        warmup: int = 16,
        half_life: float = 64.0,
        columns: int = 0,
        lag: int = LAG,
    ) -> None:
        if block < 1 or warmup < 2 or half_life <= 0 or lag < 0:
            raise ValueError("block ≥ 1, warmup ≥ 2, half_life > 0 and lag ≥ 0 are required")
        self.block = block
        self.lag = lag
        self.warmup = warmup
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.columns = columns
        self.reset()

    def reset(self) -> None:
        shape = (max(self.columns, 1),)
        for f in self.FIELDS:
            setattr(self, f, np.zeros(shape))
        self.blocks = 0  # blocks in the reference
        self.part_n = 0
        self.pending: deque[tuple[np.ndarray, np.ndarray, np.ndarray]] = deque()

    @property
    def scale(self) -> np.ndarray:
        b = self.block
        base = np.maximum(np.maximum(self.var_block, self.var_event / b), self.range2 / (b * b))
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = np.where(self.var_level > 0, 1.0 - self.var_block / self.var_level, 0.0)
        rho = np.clip(np.nan_to_num(rho), 0.0, self.MAX_RHO)
        return np.sqrt(np.maximum(base * (1.0 + rho) / (1.0 - rho), 1e-18))

    def push(self, values: np.ndarray | Sequence[float]) -> list:
        v = np.asarray(values, dtype=np.float64)
        v = v.reshape(v.shape[0], -1) if v.ndim else v.reshape(1, 1)
        v = v[np.isfinite(v).all(axis=1)]
        out: list = []
        i, n = 0, v.shape[0]
        while n - i >= self.block - self.part_n:
            chunk = v[i : i + self.block - self.part_n]
            i += chunk.shape[0]
            self._gather(chunk)
            m, m2 = self.part_sum / self.block, self.part_sq / self.block
            spread = self.part_max - self.part_min
            self.part_n = 0
            z = self._close(m, m2, spread)
            if z is not None:
                out.append(z if self.columns else float(z[0]))
        if i < n:
            self._gather(v[i:])
        return out

    def _gather(self, chunk: np.ndarray) -> None:
        if self.part_n == 0:
            self.part_sum = np.zeros(chunk.shape[1])
            self.part_sq = np.zeros(chunk.shape[1])
            self.part_max = np.full(chunk.shape[1], -np.inf)
            self.part_min = np.full(chunk.shape[1], np.inf)
        self.part_sum = self.part_sum + chunk.sum(axis=0)
        self.part_sq = self.part_sq + np.einsum("ij,ij->j", chunk, chunk)
        self.part_max = np.maximum(self.part_max, chunk.max(axis=0))
        self.part_min = np.minimum(self.part_min, chunk.min(axis=0))
        self.part_n += chunk.shape[0]

    def _close(self, m: np.ndarray, m2: np.ndarray, spread: np.ndarray) -> np.ndarray | None:
        within = np.maximum(m2 - m * m, 0.0)
        z = None
        if self.blocks >= self.warmup:  # studentised: see the module doc
            z = (m - self.mean) / np.maximum(self.scale, np.sqrt(within / self.block))
        if z is None or not self.lag:
            self._fold(m, within, spread)
        else:  # the reference takes a block only `lag` blocks later (see the module doc)
            self.pending.append((m, within, spread))
            if len(self.pending) > self.lag:
                self._fold(*self.pending.popleft())
        return z

    def _fold(self, m: np.ndarray, within: np.ndarray, spread: np.ndarray) -> None:
        """Take one block into the reference."""
        self.blocks += 1
        d = m - self.mean
        step = m - self.last
        if self.blocks > self.warmup:
            sd = self.scale
            step = np.clip(step, -2 * WINSOR * sd, 2 * WINSOR * sd)
        w = max(self.alpha, 1.0 / self.blocks)
        self.mean = self.mean + w * d
        self.var_level = (1.0 - w) * (self.var_level + w * d * d)
        self.range2 = self.range2 + w * (spread * spread - self.range2)
        if self.blocks > 1:  # E[(m_j - m_j-1)^2] = 2 var for independent blocks
            v = max(self.alpha, 1.0 / (self.blocks - 1))
            self.var_block = self.var_block + v * (step * step / 2.0 - self.var_block)
        self.last = m
        self.var_event = self.var_event + w * (within - self.var_event)

    def state(self) -> np.ndarray:
        """``[blocks, part_n, *mean, *var_block, ..., pending, *pending blocks]`` as one
        float array."""
        held = [x for block in self.pending for x in block]
        return np.concatenate(
            [[self.blocks, self.part_n], *(getattr(self, f) for f in self.FIELDS),
             [len(self.pending)], *held]
        )  # fmt: skip

    def load(self, state: np.ndarray | Sequence[float]) -> None:
        s = np.asarray(state, dtype=np.float64)
        d = max(self.columns, 1)
        fixed = 2 + d * len(self.FIELDS)
        held = int(s[fixed]) if s.size > fixed else 0  # none in a checkpoint before `lag`
        if s.size not in (fixed, fixed + 1 + 3 * d * held):
            raise ValueError(f"drift signal state has {s.size} values, expected {fixed}+")
        self.blocks, self.part_n = int(s[0]), int(s[1])
        for k, f in enumerate(self.FIELDS):
            setattr(self, f, s[2 + k * d : 2 + (k + 1) * d].copy())
        rows = s[fixed + 1 :].reshape(held, 3, d) if held else ()
        self.pending = deque((r[0].copy(), r[1].copy(), r[2].copy()) for r in rows)
        while len(self.pending) > self.lag:  # a checkpoint from a longer lag
            self._fold(*self.pending.popleft())


_NORMAL = NormalDist()


def max_abs_score(z: np.ndarray) -> float:
    """The largest |z| of ``len(z)`` columns as one standard-normal score.

    The chance that the largest of d independent |N(0, 1)| exceeds m is
    ``1 - (1 - 2Φ(-m))^d`` (Šidák); the score is the one-sided normal quantile of that
    chance. Columns of one featurizer are rarely independent (a window's lags overlap);
    for positively dependent columns the correction errs towards fewer alarms, unlike a
    chi-square sum, which correlated columns inflate.

    >>> round(max_abs_score(np.array([1.0])), 2), round(max_abs_score(np.zeros(8)), 2)
    (0.48, -6.0)
    >>> max_abs_score(np.array([0.1, 5.0, -0.3])) > 4
    True
    """
    d = max(len(z), 1)
    tail = math.erfc(float(np.max(np.abs(z))) / math.sqrt(2.0))  # P(|N| > m)
    p = -math.expm1(d * math.log1p(-tail)) if tail < 1.0 else 1.0
    p = min(max(p, 1e-15), 1.0 - 1e-9)
    return max(-6.0, _NORMAL.inv_cdf(1.0 - p))
