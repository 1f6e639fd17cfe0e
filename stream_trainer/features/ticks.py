"""Tick featurizer: per-symbol window of volatility-normalised log returns -> next return.

The label of a tick is the return it realises against the symbol's previous tick;
its features are the returns *before* it, so predicting it is an honest forecast.
A symbol's first two ticks only seed state (a price, then a first return).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import FeatureBatch, KeyedSlots, RunningMoments, stable_hash

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

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "slots": self.slots.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["window"] != self.window:
            raise ValueError(
                f"tick window changed: checkpoint {state['window']}, config {self.window}"
            )
        self.slots.load_state_dict(state["slots"])
