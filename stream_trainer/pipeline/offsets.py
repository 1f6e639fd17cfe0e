"""Which offsets the model state holds, per partition. Pure.

``next`` is the next offset to read according to the model in memory (an offset
advances when its event is trained, seeded or rejected): what a checkpoint stores and a
commit sends. ``polled_next`` is the next offset the consumer should hand us: a lower
one means the partition's log went back. The ledger keeps the applied ranges (see
:mod:`~stream_trainer.pipeline.ledger`); replicas also keep the ranges applied since
the last shared checkpoint (``fresh``) on top of that checkpoint's ledger (``base``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from stream_trainer.pipeline.ledger import OffsetLedger
from stream_trainer.pipeline.ports import TP, Record


class Offsets:
    def __init__(self, replicated: bool = False) -> None:
        self.next: dict[TP, int] = {}
        self.polled_next: dict[TP, int] = {}
        self.ledger = OffsetLedger()
        self.fresh: OffsetLedger | None = OffsetLedger() if replicated else None
        self.base: OffsetLedger | None = OffsetLedger() if replicated else None
        self.dirty = False  # applied since the last checkpoint

    def applied(self, tp: TP, start: int, end: int) -> None:
        if end > self.next.get(tp, 0):
            self.next[tp] = end
        self.ledger.add_range(tp, start, end)
        if self.fresh is not None:
            self.fresh.add_range(tp, start, end)
        self.dirty = True

    def applied_records(self, records: Iterable[Record]) -> None:
        """``applied`` for many records: one range per run of consecutive offsets."""
        run_tp, start, end = None, 0, 0
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp == run_tp and rec.offset == end:
                end += 1
                continue
            if run_tp is not None:
                self.applied(run_tp, start, end)
            run_tp, start, end = tp, rec.offset, rec.offset + 1
        if run_tp is not None:
            self.applied(run_tp, start, end)

    def went_back(self, tp: TP, got: int) -> None:
        """The log of ``tp`` restarts at ``got``: follow it, in a new ledger epoch."""
        self.next[tp] = got
        self.ledger.reset(tp)

    def resume(self) -> dict[TP, int]:
        """Where each partition resumes: the model state's next offsets."""
        self.polled_next = dict(self.next)
        return dict(self.next)

    def merge_from(self, lower: Mapping[TP, int]) -> None:
        """Take any higher offset (replicas: the shared model's, from a round)."""
        for tp, o in lower.items():
            if o > self.next.get(tp, -1):
                self.next[tp] = o

    def state(self) -> dict[str, Any]:
        return {"offsets": {f"{t}:{p}": o for (t, p), o in sorted(self.next.items())},
                "ledger": self.ledger.state_dict()}  # fmt: skip

    def load(self, doc: Mapping[str, Any]) -> None:
        if doc["ledger"]:
            self.ledger.load_state_dict(doc["ledger"])
            if self.base is not None:
                self.base.load_state_dict(doc["ledger"])
        self.next = {parse_tp(k): int(v) for k, v in doc["offsets"].items()}


def parse_tp(key: str) -> TP:
    topic, _, part = key.rpartition(":")
    return topic, int(part)


def fmt_offsets(offsets: Mapping[TP, int]) -> str:
    return ",".join(f"{t}:{p}@{o}" for (t, p), o in sorted(offsets.items())) or "-"
