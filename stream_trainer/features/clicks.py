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
        # str -> int only: dicts the garbage collector never walks (a tuple key would
        # make it walk a million entries now and then: a 30 ms pause in an ingest worker)
        self._pairs: dict[str, int] = {}
        self._tokens: dict[tuple[str, Any, type], tuple[int, float]] = {}
        # each distinct context once: its tokens as a row of these tables (row 0: none)
        self._contexts: dict[tuple[tuple, tuple] | tuple[()], int] = {(): 0}
        self._ctx_ids = np.zeros((64, max_context), np.int64)
        self._ctx_w = np.zeros((64, max_context), np.float32)

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

    def _context_row(self, context: Mapping[str, Any]) -> int:
        """The row of the context table holding this context's tokens (added if new)."""
        key = (tuple(context.items()), tuple(map(type, context.values())))
        row = self._contexts.get(key)
        if row is not None:
            return row
        row = len(self._contexts)
        if row == len(self._ctx_ids):  # grow the table
            self._ctx_ids = np.concatenate([self._ctx_ids, np.zeros_like(self._ctx_ids)])
            self._ctx_w = np.concatenate([self._ctx_w, np.zeros_like(self._ctx_w)])
        tok_h = self._tokens
        self._ctx_ids[row], self._ctx_w[row] = 0, 0.0  # a row used before a clear
        for j, (k, v) in enumerate(sorted(context.items())[: self.max_context]):
            tkey = (k, v, type(v))  # 1, 1.0 and True are equal keys, not equal tokens
            tok = tok_h.get(tkey)
            if tok is None:
                tok = self._remember(tok_h, tkey, self._token(k, v))
            self._ctx_ids[row, j], self._ctx_w[row, j] = tok
        self._contexts[key] = row
        return row

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        """One pass over the events for what only Python can do (dict lookups of ids
        and contexts, hashing what is new); the arrays are then built by numpy."""
        n = len(events)
        if len(self._contexts) + n > HASH_CACHE_MAX:  # bounded; only between batches
            self._contexts = {(): 0}
        ub, pb, salt = self.id_buckets, self.pair_buckets, self.salt
        user_h, item_h, pair_h = self._users, self._items, self._pairs
        remember, context_row = self._remember, self._context_row
        users, items, pairs, rows, labels, keys = [], [], [], [], [], []
        for ev in events:
            u, it = ev["user_id"], ev["item_id"]
            h = user_h.get(u)
            users.append(h if h is not None else remember(user_h, u, stable_hash(u, ub, salt)))
            h = item_h.get(it)
            items.append(
                h if h is not None else remember(item_h, it, stable_hash(it, ub, salt + 1))
            )
            if pb:
                pair = f"{u}\x1f{it}"
                h = pair_h.get(pair)
                if h is None:
                    h = remember(pair_h, pair, stable_hash(pair, pb, salt + 2))
                pairs.append(h)
            context = ev.get("context")
            rows.append(context_row(context) if context else 0)
            labels.append(ev["label"])
            keys.append(u)
        row = np.array(rows, np.int64)
        inputs: dict[str, np.ndarray] = {
            "user": np.array(users, np.int64).reshape(n),
            "item": np.array(items, np.int64).reshape(n),
            "ctx": self._ctx_ids[row],
            "ctx_w": self._ctx_w[row],
        }
        if pb:
            inputs["pair"] = np.array(pairs, np.int64).reshape(n)
        return FeatureBatch(
            inputs=inputs,
            targets=np.array(labels, np.float32).reshape(n),
            index=np.arange(n),
            keys=keys,
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
