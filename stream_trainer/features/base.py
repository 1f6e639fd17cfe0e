"""The featurizer interface and the keyed-state helpers the built-in ones share.

Imports no torch (an ingest worker featurizes with it): the keyed state's tensors are
made where a checkpoint is."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass
class FeatureBatch:
    """Examples made from a list of events.

    ``index[j]`` is the position, in the input event list, of the event that made
    example ``j``; events without an example (a key's warm-up) only updated state.
    Model outputs map back to raw units as ``raw = out * scale + shift``.
    """

    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    index: np.ndarray
    scale: np.ndarray | None = None
    shift: np.ndarray | None = None
    keys: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def raw_units(self, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predictions (``outputs``, in model units) and targets in the events' own units."""
        if self.scale is None:
            return outputs, self.targets
        return outputs * self.scale + self.shift, self.targets * self.scale + self.shift


@dataclass(slots=True)
class Made:
    """Examples an ingest worker made from one poll's accepted events with a stateless
    featurizer: row ``j`` is the ``j``-th accepted event's. The trainer's batches refer
    to rows as ``(block, j)`` tuples and :func:`gather` them."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray


def gather(rows: Sequence[tuple[Made, int]]) -> FeatureBatch:
    """One batch from rows of made blocks, in the order given (what the featurizer would
    have made from those events in one call: a stateless one's rows do not depend on
    their neighbours).

    >>> a = Made({"x": np.arange(4)}, np.arange(4.0))
    >>> b = Made({"x": np.arange(10, 12)}, np.arange(10.0, 12.0))
    >>> fb = gather([(a, 1), (a, 3), (b, 0)])
    >>> fb.inputs["x"].tolist(), fb.targets.tolist(), fb.index.tolist()
    ([1, 3, 10], [1.0, 3.0, 10.0], [0, 1, 2])
    """
    runs: list[tuple[Made, list[int]]] = []
    block: Made | None = None
    js: list[int]
    for b, j in rows:
        if b is not block:
            block, js = b, []
            runs.append((b, js))
        js.append(j)
    parts = []
    for b, js in runs:
        lo, hi = js[0], js[-1] + 1
        take: Any = slice(lo, hi) if hi - lo == len(js) else np.array(js, np.int64)
        parts.append(({k: v[take] for k, v in b.inputs.items()}, b.targets[take]))
    if len(parts) == 1:  # copied: a slice is a view of the (read-only) received bytes
        copy = np.array if isinstance(take, slice) else np.asarray
        inputs = {k: copy(v) for k, v in parts[0][0].items()}
        targets = copy(parts[0][1])
    else:
        inputs = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
        targets = np.concatenate([p[1] for p in parts])
    n = len(rows)
    return FeatureBatch(inputs=inputs, targets=targets, index=np.arange(n))


def is_stateless(featurizer: Any, kind: str) -> bool:
    """Whether ``featurizer`` makes each event's example from that event alone (one
    example per event, in order): the clicks featurizer, and custom classes that set
    ``stateless = True``. Such a featurizer can run anywhere: in an ingest worker, in
    the serving process."""
    return bool(getattr(featurizer, "stateless", kind == "clicks"))


@runtime_checkable
class Featurizer(Protocol):
    """What the pipeline needs from a featurizer (built-in or ``pkg.module:Class``)."""

    task: str  # "binary" (log loss) or "regression" (MSE)
    input_spec: Mapping[str, Any]  # passed to the model factory

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def stable_hash(text: str, buckets: int, salt: int = 0) -> int:
    """Deterministic across processes (unlike ``hash``); bucket 0 is reserved for padding.

    >>> stable_hash("user-42", 1024) == stable_hash("user-42", 1024)
    True
    """
    return 1 + zlib.crc32(text.encode("utf-8", "surrogatepass"), salt) % (buckets - 1)


class KeyedSlots:
    """Maps keys (symbols, sensor ids) to rows of growable per-key arrays."""

    def __init__(self, **columns: tuple[tuple[int, ...], float]) -> None:
        self._shapes = {name: shape for name, (shape, _) in columns.items()}
        self._fill = {name: fill for name, (_, fill) in columns.items()}
        self.slot: dict[str, int] = {}
        self.arrays: dict[str, np.ndarray] = {
            name: np.full((16, *shape), fill, dtype=np.float64)
            for name, (shape, fill) in columns.items()
        }

    def __len__(self) -> int:
        return len(self.slot)

    def get(self, key: str) -> int:
        row = self.slot.get(key)
        if row is None:
            row = len(self.slot)
            self.slot[key] = row
            cap = next(iter(self.arrays.values())).shape[0]
            if row >= cap:
                for name, arr in self.arrays.items():
                    grown = np.full((cap * 2, *arr.shape[1:]), self._fill[name], arr.dtype)
                    grown[:cap] = arr
                    self.arrays[name] = grown
        return row

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The row of each key (new keys get one; the arrays may grow: read
        ``arrays`` after this)."""
        slot, get = self.slot, self.get
        return np.fromiter(
            (slot.get(k) if k in slot else get(k) for k in keys), np.int64, len(keys)
        )

    def state_dict(self) -> dict[str, Any]:
        import torch

        n = len(self.slot)
        keys = sorted(self.slot, key=self.slot.__getitem__)
        return {
            "keys": keys,
            "arrays": {k: torch.from_numpy(a[:n].copy()) for k, a in self.arrays.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = list(state["keys"])
        arrays = state["arrays"]
        if set(arrays) != set(self.arrays):
            raise ValueError(f"keyed state columns {sorted(arrays)} != {sorted(self.arrays)}")
        self.slot = {}
        for k in keys:
            self.get(k)
        for name, value in arrays.items():
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            if arr.shape[1:] != self._shapes[name] or arr.shape[0] != len(keys):
                raise ValueError(f"keyed state column {name!r} has shape {arr.shape}")
            self.arrays[name][: len(keys)] = arr


def occurrence_rounds(rows: np.ndarray) -> list[np.ndarray]:
    """Positions of a batch's state rows in rounds: round ``r`` holds every row's
    ``r``-th occurrence, in batch order. Within a round the rows are distinct, so its
    state updates apply at once (numpy over the round), and the rounds in order give
    exactly what event after event gives. A batch of many keys takes few rounds.

    >>> [r.tolist() for r in occurrence_rounds(np.array([5, 3, 5, 5, 3, 9]))]
    [[0, 1, 5], [2, 4], [3]]
    """
    if len(rows) == 0:
        return []
    rank = occurrence_rank(rows)
    by_rank = np.argsort(rank, kind="stable")
    return np.split(by_rank, np.cumsum(np.bincount(rank))[:-1])


def occurrence_rank(rows: np.ndarray) -> np.ndarray:
    """Per position: how many times its row came before it in the batch.

    >>> occurrence_rank(np.array([5, 3, 5, 5, 3, 9])).tolist()
    [0, 0, 1, 2, 1, 0]
    """
    n = len(rows)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    first = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # each row's first
    starts = np.repeat(first, np.diff(np.r_[first, n]))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - starts
    return rank


class RunningMoments:
    """Per-row exponentially weighted mean/variance; exact averages for the first 1/alpha.

    Operates in place on ``mean``, ``var`` and ``count`` rows of a :class:`KeyedSlots`:
    one row, or several distinct rows at once (``x`` then has a row per state row).

    >>> slots = KeyedSlots(mean=((1,), 0.0), var=((1,), 0.0), count=((), 0.0))
    >>> m = RunningMoments(alpha=0.01)
    >>> r = slots.get("a")
    >>> for x in (1.0, 2.0, 3.0):
    ...     m.update(slots, r, np.array([x]))
    >>> float(slots.arrays["mean"][r, 0]), round(float(slots.arrays["var"][r, 0]), 4)
    (2.0, 0.6667)
    """

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha

    def update(
        self, slots: KeyedSlots, rows: int | np.ndarray, x: np.ndarray, center: bool = True
    ) -> None:
        a = slots.arrays
        count = a["count"][rows] + 1
        a["count"][rows] = count
        w = np.expand_dims(np.maximum(self.alpha, 1.0 / count), -1)
        if center:
            mean = a["mean"][rows]
            delta = x - mean
            a["mean"][rows] = mean + w * delta
            a["var"][rows] = (1 - w) * (a["var"][rows] + w * delta * delta)
        else:  # zero-mean assumption (returns): var is the mean square
            a["var"][rows] = (1 - w) * a["var"][rows] + w * x * x
