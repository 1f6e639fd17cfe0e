"""The pipeline's edges as interfaces: what it reads from and writes to. Pure.

The Kafka implementations live in ``source/`` and ``sinks/``; the tests' fakes in
``tests/fakes.py`` implement the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stream_trainer.events.decode import Rejected

TP = tuple[str, int]  # (topic, partition)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class Source(Protocol):
    assignment: list[TP]

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]: ...

    def commit(self, offsets: Mapping[TP, int], timeout_ms: int | None = None) -> None: ...

    def watermarks(self) -> dict[TP, tuple[int, int]]: ...

    def rewind(self, tp: TP) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    def dead_letter(self, topic: str, rec: Record, why: Rejected) -> None: ...

    def output(self, topic: str, key: str | None, doc: Mapping[str, Any]) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> None: ...

    def close(self) -> None: ...
