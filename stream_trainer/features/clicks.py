"""Click featurizer: hashed ids (unbounded vocabularies), a hashed user x item cross
(what Vowpal Wabbit's ``-q ui`` gives a linear model) and hashed context tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import FeatureBatch, stable_hash

HASH_CACHE_MAX = 1 << 20  # entries per cache; cleared when full (ids churn slowly)


class ClickFeaturizer:
    """``user_id``/``item_id`` -> hash buckets; context ``k=v`` -> up to ``max_context`` tokens.

    Float context values become a weighted token ``k`` (weight = value, clipped);
    strings, booleans and integers become ``k=v`` tokens of weight 1. The ``pair``
    input hashes (user, item) into ``pair_buckets`` (0 leaves it out). Hashes are
    cached: ids repeat, and a dict hit costs a fraction of encode + crc32.
    """

    task = "binary"

    def __init__(
        self,
        id_buckets: int = 1 << 16,
        context_buckets: int = 1 << 12,
        max_context: int = 8,
        pair_buckets: int = 1 << 18,
        salt: int = 17,
    ) -> None:
        self.id_buckets = id_buckets
        self.context_buckets = context_buckets
        self.max_context = max_context
        self.pair_buckets = pair_buckets
        self.salt = salt
        self.input_spec = {
            "id_buckets": id_buckets,
            "context_buckets": context_buckets,
            "max_context": max_context,
            "pair_buckets": pair_buckets,
        }
        self._users: dict[str, int] = {}
        self._items: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, Any, type], tuple[int, float]] = {}

    @staticmethod
    def _remember(cache: dict, key: Any, value: Any) -> Any:
        if len(cache) >= HASH_CACHE_MAX:
            cache.clear()
        cache[key] = value
        return value

    def _token(self, k: str, v: Any) -> tuple[int, float]:
        if isinstance(v, float):
            return stable_hash(k, self.context_buckets, self.salt), max(-10.0, min(10.0, v))
        return stable_hash(f"{k}={v}", self.context_buckets, self.salt), 1.0

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        n = len(events)
        users = np.empty(n, np.int64)
        items = np.empty(n, np.int64)
        pairs = np.zeros(n, np.int64)
        ctx = np.zeros((n, self.max_context), np.int64)
        ctx_w = np.zeros((n, self.max_context), np.float32)
        labels = np.empty(n, np.float32)
        ub, pb, salt = self.id_buckets, self.pair_buckets, self.salt
        user_h, item_h, pair_h, tok_h = self._users, self._items, self._pairs, self._tokens
        for i, ev in enumerate(events):
            u, it = ev["user_id"], ev["item_id"]
            h = user_h.get(u)
            if h is None:
                h = self._remember(user_h, u, stable_hash(u, ub, salt))
            users[i] = h
            h = item_h.get(it)
            if h is None:
                h = self._remember(item_h, it, stable_hash(it, ub, salt + 1))
            items[i] = h
            if pb:
                h = pair_h.get((u, it))
                if h is None:
                    h = self._remember(pair_h, (u, it), stable_hash(f"{u}\x1f{it}", pb, salt + 2))
                pairs[i] = h
            labels[i] = ev["label"]
            context = ev.get("context")
            if context:
                for j, (k, v) in enumerate(sorted(context.items())[: self.max_context]):
                    key = (k, v, type(v))  # 1, 1.0 and True are equal keys, not equal tokens
                    tok = tok_h.get(key)
                    if tok is None:
                        tok = self._remember(tok_h, key, self._token(k, v))
                    ctx[i, j], ctx_w[i, j] = tok
        inputs = {"user": users, "item": items, "ctx": ctx, "ctx_w": ctx_w}
        if pb:
            inputs["pair"] = pairs
        return FeatureBatch(
            inputs=inputs,
            targets=labels,
            index=np.arange(n),
            keys=[ev["user_id"] for ev in events],
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "id_buckets": self.id_buckets,
            "context_buckets": self.context_buckets,
            "max_context": self.max_context,
            "pair_buckets": self.pair_buckets,
            "salt": self.salt,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if dict(state) != self.state_dict():
            raise ValueError(
                f"click hashing settings changed: checkpoint has {dict(state)}, "
                f"config has {self.state_dict()}"
            )
