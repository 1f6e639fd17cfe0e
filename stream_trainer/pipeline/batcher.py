"""Micro-batcher: release a batch at ``max_size`` items or when the oldest waited ``max_latency``.
And the :class:`Item` a pipeline batches: here, below core.py and joiner.py, which make them.

Pure (the clock is injected). Items leave in arrival order, none dropped or repeated.

>>> t = [0.0]
>>> b = MicroBatcher(max_size=3, max_latency_s=0.05, clock=lambda: t[0])
>>> b.add("a"); b.add("b"); b.ready()
False
>>> t[0] = 0.06; b.ready(), b.take()
(True, ['a', 'b'])
>>> for x in "cdefg": b.add(x)
>>> b.take(), b.take(), len(b)
(['c', 'd', 'e'], ['f', 'g'], 0)
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from stream_trainer.features.base import Made
from stream_trainer.pipeline.ports import Record

T = TypeVar("T")


@dataclass(slots=True)
class Item:
    record: Record
    event: dict[str, Any] | tuple[Made, int]  # the event, or its example (an ingest worker's)


class MicroBatcher(Generic[T]):
    def __init__(
        self, max_size: int, max_latency_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.max_latency_s = max_latency_s
        self.clock = clock
        self._items: deque[T] = deque()
        self._since: deque[float] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)
        self._since.append(self.clock())

    def extend(self, items: list[T]) -> None:
        """Add items that arrived together (one clock reading for all)."""
        now = self.clock()
        self._items.extend(items)
        self._since.extend([now] * len(items))

    def time_left(self) -> float | None:
        """Seconds until the oldest item is due; None when empty."""
        if not self._items:
            return None
        return max(0.0, self._since[0] + self.max_latency_s - self.clock())

    def ready(self) -> bool:
        return len(self._items) >= self.max_size or (bool(self._items) and self.time_left() == 0.0)

    def take(self) -> list[T]:
        n = min(self.max_size, len(self._items))
        out = [self._items.popleft() for _ in range(n)]
        for _ in range(n):
            self._since.popleft()
        return out

    def discard(self, drop: Callable[[T], bool]) -> int:
        """Remove the items ``drop`` selects (e.g. of partitions this process lost);
        return how many."""
        kept = [(x, t) for x, t in zip(self._items, self._since, strict=True) if not drop(x)]
        n = len(self._items) - len(kept)
        self._items = deque(x for x, _ in kept)
        self._since = deque(t for _, t in kept)
        return n
