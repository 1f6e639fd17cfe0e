"""Refuse exact duplicates of recent events (producer retries, replays upstream). Pure.

Remembers a 64-bit digest of the raw bytes of the last ``window`` accepted events, and
which partition each came from; its state travels in the checkpoint, so a duplicate is
caught across restarts too. When a partition's log goes back (the broker lost its data,
the topic was recreated), :meth:`Deduper.forget` drops that partition's digests: the
window guards against the same event delivered twice into one log, and the events of a
new log are new, even where their bytes repeat an old log's.

>>> d = Deduper(window=2)
>>> [d.seen(b"a"), d.seen(b"b"), d.seen(b"a"), d.seen(b"c"), d.seen(b"a")]
[False, False, True, False, False]
>>> d.seen(b"x", ("t", 0)), d.seen(b"x", ("t", 0)), d.forget(("t", 0)), d.seen(b"x", ("t", 0))
(False, True, 1, False)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from typing import Any

import xxhash

UNKNOWN = -1  # digests from a checkpoint that predates partitions: any reset forgets them


HASH = "xxh3_64"  # ~0.1 µs an event; the checkpoint says which, since digests must match
_xxh3 = xxhash.xxh3_64_intdigest
_SIGN = 1 << 63


def digest(raw: bytes) -> int:
    """A 64-bit digest of the bytes, as a signed int64 (how the checkpoint stores it)."""
    h = _xxh3(raw)
    return h - (1 << 64) if h >= _SIGN else h


class Deduper:
    def __init__(self, window: int = 100_000) -> None:
        self.window = window
        self._order: deque[int] = deque()
        self._owner: deque[int] = deque()  # index into _partitions, per digest in _order
        self._set: set[int] = set()
        self._partitions: list[str] = []
        self._index: dict[Hashable, int] = {}

    def seen(self, raw: bytes, partition: Hashable = None) -> bool:
        """True if ``raw`` is among the last ``window`` events; else remember it, as
        ``partition``'s (any hashable: the pipeline passes (topic, partition))."""
        if self.window <= 0:
            return False
        return self.seen_digest(digest(raw), partition)

    def seen_digest(self, h: int, partition: Hashable = None) -> bool:
        """:meth:`seen` for a digest computed elsewhere (an ingest worker)."""
        if self.window <= 0:
            return False
        if h in self._set:
            return True
        owner = self._index.get(partition)
        if owner is None:
            owner = self._index[partition] = len(self._partitions)
            self._partitions.append(_name(partition))
        self._order.append(h)
        self._owner.append(owner)
        self._set.add(h)
        if len(self._order) > self.window:
            self._set.discard(self._order.popleft())
            self._owner.popleft()
        return False

    def forget(self, partition: Hashable) -> int:
        """Drop ``partition``'s digests (its log went back); return how many."""
        owner = self._index.get(partition, -2)
        keep = [(h, o) for h, o in zip(self._order, self._owner, strict=True)
                if o != owner and o != UNKNOWN]  # fmt: skip
        dropped = len(self._order) - len(keep)
        if dropped:
            self._order = deque(h for h, _ in keep)
            self._owner = deque(o for _, o in keep)
            self._set = set(self._order)
        return dropped

    def state_dict(self) -> dict[str, Any]:
        import torch  # here: ingest workers import this module for digest() alone

        return {
            "hash": HASH,
            "window": self.window,
            "digests": torch.tensor(list(self._order), dtype=torch.int64),
            "owners": torch.tensor(list(self._owner), dtype=torch.int64),
            "partitions": list(self._partitions),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = self.window if self.window > 0 else 0
        if state.get("hash", "blake2b_64") != HASH:
            n = 0  # digests of another hash never match: start the window afresh
        digests = state["digests"].tolist()[-n:] if n else []
        owners = state["owners"].tolist()[-n:] if n and "owners" in state else []
        self._partitions = list(state.get("partitions", []))
        self._index = {_parse(p): i for i, p in enumerate(self._partitions)}
        self._order = deque(digests)
        self._owner = deque(owners or [UNKNOWN] * len(digests))
        self._set = set(digests)


def _name(partition: Hashable) -> str:
    """``("clicks", 0)`` -> ``"clicks:0"`` (how the checkpoint names partitions)."""
    if isinstance(partition, tuple) and len(partition) == 2:
        return f"{partition[0]}:{partition[1]}"
    return "" if partition is None else str(partition)


def _parse(name: str) -> Hashable:
    topic, sep, part = name.rpartition(":")
    return (topic, int(part)) if sep and part.lstrip("-").isdigit() else (name or None)
