"""The pipeline's edges as interfaces: what it reads from and writes to. Pure.

The Kafka implementations live in ``edges/`` (``source.py``, ``sink.py``); the tests'
fakes in ``tests/fakes.py`` implement the same.

Errors: every method of a :class:`Source` or :class:`Sink` raises
:class:`~stream_trainer.errors.BrokerError` when the broker fails (unreachable, a
timeout, a refused commit or message), never the client library's own exceptions, so
the pipeline handles broker failures without knowing which client is behind the port.
BrokerError is a StreamTrainerError: an ``except StreamTrainerError`` around a port
call catches broker failures too. ``close`` never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

from stream_trainer.events.decode import Rejected

TP = tuple[str, int]  # (topic, partition)


class Record(NamedTuple):
    """One consumed record. A named tuple, not a frozen dataclass: the trainer makes one
    per event from an ingest worker's columns, and a frozen dataclass's ``__init__``
    calls ``object.__setattr__`` once per field (py-spy of the clicks daemon had it at
    6 % of the trainer thread)."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


class Source(Protocol):
    """A consumer-group member: records of the partitions it is assigned, and their
    commits. Broker failures raise BrokerError (see the module docstring)."""

    @property
    def assignment(self) -> list[TP]: ...  # read only: the group assigns

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]: ...

    def commit(self, offsets: Mapping[TP, int], timeout_ms: int | None = None) -> None: ...

    def watermarks(self) -> dict[TP, tuple[int, int]]: ...

    def rewind(self, tp: TP) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """Where dead letters and outputs go; ``flush`` returns once all are delivered.
    Broker failures raise BrokerError (see the module docstring)."""

    def dead_letter(self, topic: str, rec: Record, why: Rejected) -> None: ...

    def output(self, topic: str, key: str | None, doc: Mapping[str, Any]) -> None: ...

    def flush(self, timeout_s: float = 30.0) -> None: ...

    def close(self) -> None: ...
