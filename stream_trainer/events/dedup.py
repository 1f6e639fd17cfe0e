"""Refuse exact duplicates of recent events (producer retries, replays upstream). Pure.

Remembers a 64-bit digest of the raw bytes of the last ``window`` accepted events;
its state travels in the checkpoint, so a duplicate is caught across restarts too.

>>> d = Deduper(window=2)
>>> [d.seen(b"a"), d.seen(b"b"), d.seen(b"a"), d.seen(b"c"), d.seen(b"a")]
[False, False, True, False, False]
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from typing import Any

import torch


def digest(raw: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


class Deduper:
    def __init__(self, window: int = 100_000) -> None:
        self.window = window
        self._order: deque[int] = deque()
        self._set: set[int] = set()

    def seen(self, raw: bytes) -> bool:
        """True if ``raw`` is among the last ``window`` events; else remember it."""
        if self.window <= 0:
            return False
        h = digest(raw)
        if h in self._set:
            return True
        self._order.append(h)
        self._set.add(h)
        if len(self._order) > self.window:
            self._set.discard(self._order.popleft())
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "digests": torch.tensor(list(self._order), dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        digests = state["digests"].tolist()[-self.window :] if self.window > 0 else []
        self._order = deque(digests)
        self._set = set(digests)
