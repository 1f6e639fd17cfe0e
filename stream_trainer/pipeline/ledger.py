"""Which offsets the current model state reflects, per partition, as disjoint ranges.

Every update records the offsets it applied (trained, seeded or rejected events
alike: each changed the state or was deliberately set aside). The ledger travels
in the checkpoint, so after any crash and replay it says exactly which offsets
the restored-and-continued state has seen: a gap is an event never applied, an
overlap an event applied twice (counted in ``duplicates``). Pure.

>>> led = OffsetLedger()
>>> for o in [0, 1, 2, 5, 6, 3, 4]:
...     led.add(("t", 0), o)
>>> led.ranges(("t", 0)), led.duplicates
([(0, 7)], 0)
>>> led.add(("t", 0), 3); led.duplicates
1
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from typing import Any

import torch

TP = tuple[str, int]


class OffsetLedger:
    def __init__(self) -> None:
        self._starts: dict[TP, list[int]] = {}
        self._ends: dict[TP, list[int]] = {}
        self.duplicates = 0
        self.epochs: dict[TP, int] = {}

    def add(self, tp: TP, offset: int) -> None:
        self.add_range(tp, offset, offset + 1)

    def add_range(self, tp: TP, start: int, end: int) -> None:
        """Record ``[start, end)`` as applied, merging neighbours and counting overlaps."""
        starts = self._starts.setdefault(tp, [])
        ends = self._ends.setdefault(tp, [])
        # Fast path: extends the last range (the common, in-order case).
        if starts and ends[-1] == start:
            ends[-1] = end
            return
        i = bisect.bisect_right(starts, start) - 1
        lo, hi = start, end
        j = max(i, 0)
        while j < len(starts) and starts[j] <= end:
            if ends[j] >= start:
                overlap = min(ends[j], end) - max(starts[j], start)
                self.duplicates += max(0, overlap)
                lo, hi = min(lo, starts[j]), max(hi, ends[j])
                del starts[j], ends[j]
            else:
                j += 1
        k = bisect.bisect_left(starts, lo)
        starts.insert(k, lo)
        ends.insert(k, hi)

    def merge(self, other: OffsetLedger) -> None:
        """Add every range of ``other`` (a replica's ranges since the last merge): an
        offset both hold was applied twice, and counts as a duplicate."""
        for tp in other.partitions():
            for start, end in other.ranges(tp):
                self.add_range(tp, start, end)
        self.duplicates += other.duplicates
        for tp, e in other.epochs.items():
            self.epochs[tp] = max(self.epochs.get(tp, 0), e)

    def reset(self, tp: TP) -> None:
        """The partition's log was replaced (broker lost data): start a new epoch."""
        self._starts[tp], self._ends[tp] = [], []
        self.epochs[tp] = self.epochs.get(tp, 0) + 1

    def ranges(self, tp: TP) -> list[tuple[int, int]]:
        return list(zip(self._starts.get(tp, []), self._ends.get(tp, []), strict=True))

    def partitions(self) -> list[TP]:
        return sorted(self._starts)

    def state_dict(self) -> dict[str, Any]:
        flat = {
            f"{t}:{p}": torch.tensor([x for r in self.ranges((t, p)) for x in r], dtype=torch.int64)
            for t, p in self.partitions()
        }
        return {
            "ranges": flat,
            "duplicates": self.duplicates,
            "epochs": {f"{t}:{p}": e for (t, p), e in self.epochs.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        OffsetLedger.__init__(self)
        for key, flat in state["ranges"].items():
            topic, _, part = key.rpartition(":")
            values = flat.tolist()
            self._starts[(topic, int(part))] = values[0::2]
            self._ends[(topic, int(part))] = values[1::2]
        self.duplicates = int(state["duplicates"])
        self.epochs = {
            (k.rpartition(":")[0], int(k.rpartition(":")[2])): int(v)
            for k, v in state["epochs"].items()
        }
