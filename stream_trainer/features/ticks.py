"""Tick featurizer: per-symbol window of volatility-normalised log returns -> next return.

The label of a tick is the return it realises against the symbol's previous tick;
its features are the returns *before* it, so predicting it is an honest forecast.
A symbol's first two ticks only seed state (a price, then a first return).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import (
    FeatureBatch,
    KeyedSlots,
    RunningMoments,
    stable_hash,
)

CLIP = 10.0


class TickFeaturizer:
    task = "regression"

    def __init__(self, window: int = 16, symbol_buckets: int = 1024, alpha: float = 0.01) -> None:
        self.window = window
        self.symbol_buckets = symbol_buckets
        self.moments = RunningMoments(alpha)
        self.input_spec = {"window": window, "symbol_buckets": symbol_buckets}
        self.slots = KeyedSlots(
            price=((), math.nan),
            returns=((window,), 0.0),
            mean=((1,), 0.0),
            var=((1,), 0.0),
            count=((), 0.0),
        )
        self._buckets: dict[str, int] = {}  # symbol -> its embedding bucket

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """A symbol's ticks in order (two ticks of a symbol in one batch see each other).

        The scalar recurrences (price, count, variance) run over the batch in plain
        floats, the same operations as one event at a time; the windows are then cut,
        all at once, from each symbol's returns: its stored window followed by the
        returns this batch realised."""
        alpha = self.moments.alpha
        symbols = [ev["symbol"] for ev in events]
        slot = self.slots.rows(symbols).tolist()
        a = self.slots.arrays
        state: dict[int, list[Any]]  # slot -> [price, count, var, its returns in this batch]
        state = {s: [float(a["price"][s]), float(a["count"][s]), float(a["var"][s, 0]), []]
                 for s in dict.fromkeys(slot)}  # fmt: skip
        rows: list[int] = []
        at: list[tuple[int, int]] = []  # per example: (its slot, returns before it here)
        targets: list[float] = []
        scales: list[float] = []
        for i, (s, ev) in enumerate(zip(slot, events, strict=True)):
            k = state[s]
            last, k[0] = k[0], ev["price"]
            if last != last:  # NaN: a symbol's first tick only sets its price
                continue
            r = math.log(ev["price"] / last)
            seq = k[3]
            if k[1] >= 1:  # a first return only seeds the statistics
                std = math.sqrt(k[2]) or 1e-8
                rows.append(i)
                at.append((s, len(seq)))
                targets.append(max(-CLIP, min(CLIP, r / std)))
                scales.append(std)
            seq.append(r)
            k[1] += 1
            wt = max(alpha, 1.0 / k[1])
            k[2] = (1 - wt) * k[2] + wt * r * r
        windows = self._windows(state, at)
        for s, (price, count, var, _) in state.items():
            a["price"][s], a["count"][s], a["var"][s, 0] = price, count, var
        scale = np.asarray(scales, np.float64)
        keys = [symbols[i] for i in rows]
        n = len(rows)
        return FeatureBatch(
            inputs={
                "window": np.clip(windows / scale[:, None], -CLIP, CLIP).astype(np.float32),
                "symbol": np.fromiter((self._bucket(k) for k in keys), np.int64, n),
            },
            targets=np.asarray(targets, np.float32),
            index=np.asarray(rows, np.int64),
            scale=scale.astype(np.float32),
            shift=np.zeros(n, np.float32),
            keys=keys,
        )

    def _windows(self, state: dict[int, list[Any]], at: list[tuple[int, int]]) -> np.ndarray:
        """Each example's raw window, and every symbol's stored window moved on. A
        symbol's history is its stored window then this batch's returns; an example
        ``q`` returns into the batch sees ``history[q : q + window]``."""
        w = self.window
        ks = np.fromiter(state, np.int64, len(state))
        lengths = np.fromiter((len(k[3]) for k in state.values()), np.int64, len(state))
        starts = np.cumsum(w + lengths) - (w + lengths)  # each symbol's history in `hist`
        hist = np.empty(int((w + lengths).sum()))
        span = np.arange(w)
        returns = self.slots.arrays["returns"]
        hist[(starts[:, None] + span).ravel()] = returns[ks].ravel()
        batch = np.fromiter(itertools.chain.from_iterable(k[3] for k in state.values()),
                            np.float64, int(lengths.sum()))  # fmt: skip
        first = np.repeat(starts + w - (np.cumsum(lengths) - lengths), lengths)
        hist[first + np.arange(len(batch))] = batch
        returns[ks] = hist[(starts + lengths)[:, None] + span]
        if not at:
            return np.zeros((0, w))
        where = {s: j for j, s in enumerate(state)}
        begin = np.fromiter((starts[where[s]] + q for s, q in at), np.int64, len(at))
        return hist[begin[:, None] + span]

    def _bucket(self, symbol: str) -> int:
        b = self._buckets.get(symbol)
        if b is None:
            b = self._buckets[symbol] = stable_hash(symbol, self.symbol_buckets)
        return b

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "slots": self.slots.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["window"] != self.window:
            raise ValueError(
                f"tick window changed: checkpoint {state['window']}, config {self.window}"
            )
        self.slots.load_state_dict(state["slots"])
