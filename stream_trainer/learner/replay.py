"""Replay: a reservoir of past examples mixed into each update, against forgetting.

A uniform reservoir over every example seen (Vitter's algorithm R, vectorised per
batch): old concepts keep a share of the buffer long after the stream moved on, so
when one comes back (A -> B -> A) the model has not wholly unlearned it. Replayed rows
only join the update; the prequential losses and predictions stay those of the new
events. The buffer lives in the checkpoint, so restarts replay what they would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

KEY = "__key__"  # the input column that holds each stored row's key (by_key models)


class ReplayBuffer:
    def __init__(
        self, capacity: int, fraction: float = 0.25, seed: int = 0, max_rows: int | None = None
    ) -> None:
        if capacity < 1 or not 0.0 < fraction <= 4.0:
            raise ValueError("replay: capacity must be >= 1 and 0 < fraction <= 4")
        self.capacity, self.fraction, self.seed = capacity, fraction, seed
        self.max_rows = max_rows  # at most this many replayed rows per update (None: any)
        self.seen = 0
        self.inputs: dict[str, np.ndarray] = {}
        self.targets: np.ndarray | None = None
        # by_key models: each row's key, stored as an index into key_names (KEY column)
        self.key_names: list[str] = []
        self._key_index: dict[str, int] = {}

    def _rng(self, salt: int) -> np.random.Generator:
        """Randomness keyed by the stream position: a restored buffer draws the same."""
        return np.random.default_rng([self.seed, self.seen, salt])

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def _alloc(self, inputs: Mapping[str, np.ndarray], targets: np.ndarray) -> None:
        self.inputs = {
            k: np.zeros((self.capacity, *v.shape[1:]), v.dtype) for k, v in inputs.items()
        }
        self.targets = np.zeros((self.capacity, *targets.shape[1:]), targets.dtype)

    def _fits(self, inputs: Mapping[str, np.ndarray], targets: np.ndarray) -> bool:
        assert self.targets is not None
        same = self.inputs.keys() == inputs.keys() and all(
            self.inputs[k].shape[1:] == v.shape[1:] and self.inputs[k].dtype == v.dtype
            for k, v in inputs.items()
        )
        return same and self.targets.shape[1:] == targets.shape[1:]

    def add(self, inputs: Mapping[str, np.ndarray], targets: np.ndarray, keys: Any = None) -> None:
        """``keys``: each row's key (``by_key`` models), replayed to the same key's model."""
        n = int(targets.shape[0])
        if n == 0:
            return
        if keys is not None:
            index = self._key_index
            for k in keys:
                if k not in index:
                    index[k] = len(self.key_names)
                    self.key_names.append(k)
            inputs = {**inputs, KEY: np.fromiter((index[k] for k in keys), np.int64, n)}
        if self.targets is None or not self._fits(inputs, targets):
            self._alloc(inputs, targets)  # first batch, or the featurizer's shapes changed
            self.seen = 0
        assert self.targets is not None
        # row t of the stream (0-based) goes to slot t while there is room; afterwards
        # to a uniform slot j in [0, t] when j < capacity (kept with probability cap/(t+1))
        t = self.seen + np.arange(n)
        slot = np.where(t < self.capacity, t, self._rng(0).integers(0, t + 1))
        keep = slot < self.capacity
        rows, slot = np.nonzero(keep)[0], slot[keep]
        for k, v in inputs.items():
            self.inputs[k][slot] = v[rows]
        self.targets[slot] = targets[rows]
        self.seen += n

    def sample(self, n_new: int) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
        """About ``fraction * n_new`` stored rows, at most ``max_rows`` (none while the
        buffer is empty)."""
        size = len(self)
        k = min(size, int(round(self.fraction * n_new)))
        if self.max_rows is not None:
            k = min(k, self.max_rows)
        if k == 0 or self.targets is None:
            return None
        idx = self._rng(1).integers(0, size, k)
        out = {name: arr[idx] for name, arr in self.inputs.items()}
        if KEY in out:  # back to the key names
            out[KEY] = np.asarray(self.key_names, dtype=object)[out[KEY]]
        return out, self.targets[idx]

    def state_dict(self) -> dict[str, Any]:
        size = len(self)
        return {
            "seen": self.seen,
            "inputs": {k: torch.from_numpy(v[:size].copy()) for k, v in self.inputs.items()},
            "targets": (
                torch.from_numpy(self.targets[:size].copy())
                if self.targets is not None
                else torch.zeros(0)
            ),
            "key_names": list(self.key_names),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state["seen"])
        self.inputs, self.targets = {}, None
        self.key_names = list(state.get("key_names", []))
        self._key_index = {k: i for i, k in enumerate(self.key_names)}
        size = len(self)
        if size == 0:
            return
        inputs = {k: v.numpy() for k, v in state["inputs"].items()}
        targets = state["targets"].numpy()
        if targets.shape[0] != size:
            raise ValueError(f"replay buffer holds {targets.shape[0]} rows, expected {size}")
        self._alloc(inputs, targets)
        assert self.targets is not None
        for k, v in inputs.items():
            self.inputs[k][:size] = v
        self.targets[:size] = targets
