"""Click featurizer: hashed ids (unbounded vocabularies) and hashed context tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import FeatureBatch, stable_hash


class ClickFeaturizer:
    """``user_id``/``item_id`` -> hash buckets; context ``k=v`` -> up to ``max_context`` tokens.

    Float context values become a weighted token ``k`` (weight = value, clipped);
    strings, booleans and integers become ``k=v`` tokens of weight 1.
    """

    task = "binary"

    def __init__(
        self,
        id_buckets: int = 1 << 16,
        context_buckets: int = 1 << 12,
        max_context: int = 8,
        salt: int = 17,
    ) -> None:
        self.id_buckets = id_buckets
        self.context_buckets = context_buckets
        self.max_context = max_context
        self.salt = salt
        self.input_spec = {
            "id_buckets": id_buckets,
            "context_buckets": context_buckets,
            "max_context": max_context,
        }

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        n = len(events)
        users = np.empty(n, np.int64)
        items = np.empty(n, np.int64)
        ctx = np.zeros((n, self.max_context), np.int64)
        ctx_w = np.zeros((n, self.max_context), np.float32)
        labels = np.empty(n, np.float32)
        for i, ev in enumerate(events):
            users[i] = stable_hash(ev["user_id"], self.id_buckets, self.salt)
            items[i] = stable_hash(ev["item_id"], self.id_buckets, self.salt + 1)
            labels[i] = ev["label"]
            for j, (k, v) in enumerate(sorted(ev.get("context", {}).items())[: self.max_context]):
                if isinstance(v, float):
                    ctx[i, j] = stable_hash(k, self.context_buckets, self.salt)
                    ctx_w[i, j] = max(-10.0, min(10.0, v))
                else:
                    ctx[i, j] = stable_hash(f"{k}={v}", self.context_buckets, self.salt)
                    ctx_w[i, j] = 1.0
        return FeatureBatch(
            inputs={"user": users, "item": items, "ctx": ctx, "ctx_w": ctx_w},
            targets=labels,
            index=np.arange(n),
            keys=[ev["user_id"] for ev in events],
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "id_buckets": self.id_buckets,
            "context_buckets": self.context_buckets,
            "max_context": self.max_context,
            "salt": self.salt,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state) != self.state_dict():
            raise ValueError(
                f"click hashing settings changed: checkpoint has {dict(state)}, "
                f"config has {self.state_dict()}"
            )
