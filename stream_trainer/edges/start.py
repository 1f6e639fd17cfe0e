"""Where a source starts when its model holds no offsets, and how it catches up.

``source.start_from`` is ``committed`` (the group's offsets; nothing to do here),
``earliest``, ``latest`` or a time. ``latest`` and a time are resolved once, at start,
to an offset per partition, with a consumer of their own (no group):

- ``latest``: the high watermark that a fetch reports. ``seek_to_end`` would ask the
  broker's ListOffsets, which the local Tansu broker answers wrongly (too low).
- a time: the first offset whose record timestamp is at or after it, Kafka's
  ``offsets_for_times`` (ListOffsets by timestamp). Its answer is checked against the
  records themselves (the record at the offset has the answered timestamp, at or after
  the time, and the one before it is earlier); where that fails the offsets come from
  scanning the records' timestamps from the log's start. Tansu 0.6.0 needs the scan:
  it answers every timestamp with offset 0 and its own clock's time.

:class:`CatchUp` logs progress (events behind, events/s, ETA) while a pipeline is far
behind the log's end, e.g. after starting from a time in the past.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from stream_trainer.config import KafkaSettings
from stream_trainer.errors import BrokerError
from stream_trainer.pipeline.ports import TP

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 30.0  # without a fetch answer for this long: the broker is not answering
SCAN_PROGRESS_S = 10.0
WAIT_ALL_S = 10.0  # CatchUp: how long to wait for every partition's first watermark


def partitions(consumer: KafkaConsumer, topics: Iterable[str]) -> list[TP]:
    """Every partition of ``topics`` that exists now."""
    out: list[TP] = []
    for t in topics:
        out.extend((t, p) for p in sorted(consumer.partitions_for_topic(t) or ()))
    return out


def resolve(
    settings: KafkaSettings,
    tps: list[TP],
    where: str | int,
    security: Mapping[str, Any] | None = None,
    topics: Iterable[str] = (),
) -> dict[TP, int]:
    """Offsets for ``where`` (``latest`` or a time in Unix ms) of ``tps`` (or, when empty,
    of every partition of ``topics``)."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        request_timeout_ms=settings.request_timeout_ms,
        **dict(security or {}),
    )
    try:
        tps = tps or partitions(consumer, topics)
        if not tps:
            return {}
        if where == "latest":
            return ends(consumer, tps)
        assert isinstance(where, int), where
        return by_time(consumer, tps, where)
    except KafkaError as err:
        raise BrokerError(
            f"finding where to start ({where}) on {settings.bootstrap_servers}: {err!r}"
        ) from err
    finally:
        consumer.close()


def _fetch_until(consumer: KafkaConsumer, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + RESOLVE_TIMEOUT_S
    while not done():
        if time.monotonic() > deadline:
            raise BrokerError(f"no fetch answer within {RESOLVE_TIMEOUT_S:.0f}s ({what})")
        consumer.poll(timeout_ms=200)


def ends(consumer: KafkaConsumer, tps: list[TP]) -> dict[TP, int]:
    """The high watermark of each partition, as a fetch reports it."""
    parts = [TopicPartition(*tp) for tp in tps]
    consumer.assign(parts)
    consumer.seek_to_end(*parts)  # a fetch from anywhere in the log reports the watermark
    _fetch_until(
        consumer, lambda: all(consumer.highwater(p) is not None for p in parts), "end offsets"
    )
    return {(p.topic, p.partition): int(consumer.highwater(p)) for p in parts}


def _record_at(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> Any:
    """The first record at or after ``offset`` (None at the log's end)."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    got: list[Any] = []

    def done() -> bool:
        if got:
            return True
        hw = consumer.highwater(tp)
        return hw is not None and consumer.position(tp) >= hw

    deadline = time.monotonic() + RESOLVE_TIMEOUT_S
    while not done() and time.monotonic() < deadline:
        got.extend(consumer.poll(timeout_ms=200, max_records=1).get(tp, []))
    return got[0] if got else None


def _checks_out(consumer: KafkaConsumer, tp: TopicPartition, answer: Any, ts_ms: int) -> bool:
    """The broker's answer for ``ts_ms`` agrees with the records it points at."""
    if answer is None:  # no record at or after the time: the log's end (checked by scan)
        return False
    rec = _record_at(consumer, tp, answer.offset)
    if rec is None or rec.timestamp != answer.timestamp or rec.timestamp < ts_ms:
        return False
    if answer.offset == 0:
        return True
    before = _record_at(consumer, tp, answer.offset - 1)
    return before is None or before.offset >= answer.offset or before.timestamp < ts_ms


def by_time(consumer: KafkaConsumer, tps: list[TP], ts_ms: int) -> dict[TP, int]:
    """The first offset per partition whose record timestamp is at or after ``ts_ms``
    (the high watermark where there is none)."""
    parts = [TopicPartition(*tp) for tp in tps]
    try:
        answers = consumer.offsets_for_times(dict.fromkeys(parts, ts_ms))
    except KafkaError as err:  # e.g. a broker without ListOffsets v1
        log.info("offsets by time not answered; scanning", extra={"error": repr(err)[:200]})
        answers = {}
    if answers and all(_checks_out(consumer, p, answers.get(p), ts_ms) for p in parts):
        return {(p.topic, p.partition): int(answers[p].offset) for p in parts}
    if answers:
        log.info(
            "the broker's offsets for the start time do not match its records (Tansu 0.6.0 "
            "answers offset 0 for any time); scanning record timestamps instead"
        )
    return scan(consumer, tps, ts_ms)


def scan(consumer: KafkaConsumer, tps: list[TP], ts_ms: int) -> dict[TP, int]:
    """``by_time`` by reading every partition from its start until the first record at or
    after ``ts_ms``, or its end."""
    parts = {TopicPartition(*tp): tp for tp in tps}
    consumer.assign(list(parts))
    consumer.seek_to_beginning(*parts)
    found: dict[TP, int] = {}
    started = last_said = time.monotonic()
    last_answer = started
    while len(found) < len(parts):
        batches = consumer.poll(timeout_ms=200)
        now = time.monotonic()
        if batches:
            last_answer = now
        for p, recs in batches.items():
            if parts[p] in found:
                continue
            hit = next((r for r in recs if r.timestamp >= ts_ms), None)
            if hit is not None:
                found[parts[p]] = hit.offset
                consumer.pause(p)
        for p, tp in parts.items():
            hw = consumer.highwater(p)
            if tp not in found and hw is not None and consumer.position(p) >= hw:
                found[tp] = hw  # read to the end: nothing at or after the time yet
                consumer.pause(p)
        if now - last_answer > RESOLVE_TIMEOUT_S:
            raise BrokerError(f"no fetch answer within {RESOLVE_TIMEOUT_S:.0f}s (time scan)")
        if now - last_said >= SCAN_PROGRESS_S:
            last_said = now
            log.info(
                "scanning for the start time",
                extra={"partitions_done": len(found), "partitions": len(parts),
                       "seconds": round(now - started)},
            )  # fmt: skip
    return found


def _bar(fraction: float, width: int = 20) -> str:
    """``[#####---------------] 25%``

    >>> _bar(0.25, 8)
    '[##------] 25%'
    """
    fraction = min(1.0, max(0.0, fraction))
    n = round(fraction * width)
    return f"[{'#' * n}{'-' * (width - n)}] {fraction:.0%}"


class CatchUp:
    """Progress while a pipeline is more than ``caught_up_lag`` events behind: one log
    line every ``every_s`` (events behind, done, events/s, ETA), one when caught up.
    Quiet when the pipeline starts (or stays) within the threshold. Pure but for logging.
    """

    def __init__(self, name: str, every_s: float = 10.0, caught_up_lag: int = 1000) -> None:
        self.name, self.every_s, self.caught_up_lag = name, every_s, caught_up_lag
        self.done = False
        self.started_at: float | None = None
        self.last_at = 0.0
        self.last_lag = 0
        self.consumed = 0
        self.consumed_at_last = 0
        self.positions: dict[TP, int] = {}
        self.marks: dict[TP, tuple[int, int]] = {}
        self.first_seen: float | None = None

    def observe(self, marks: Mapping[TP, tuple[int, int]], now: float, expected: int = 0) -> None:
        """One look at (position, high watermark) per partition (the loop's once a second).

        A partition's watermark is known only once a fetch for it was answered, and a
        fetch may answer one partition for a while: the last known one of each counts,
        and the start waits (up to ``WAIT_ALL_S``) until all ``expected`` are known.
        """
        if self.done or not marks:
            return
        for tp, (pos, _) in marks.items():
            prev = self.positions.get(tp)
            if prev is not None and pos > prev:
                self.consumed += pos - prev
            self.positions[tp] = pos
        self.marks.update(marks)
        self.first_seen = now if self.first_seen is None else self.first_seen
        lag = sum(max(0, hw - pos) for pos, hw in self.marks.values())
        if self.started_at is None and (
            len(self.marks) < expected and now - self.first_seen < WAIT_ALL_S
        ):
            return
        if self.started_at is None:
            if lag <= self.caught_up_lag:
                self.done = True  # live from the start: nothing to report
                return
            self.started_at, self.last_at, self.last_lag = now, now, lag
            log.info("catching up", extra={"pipeline": self.name, "behind": lag})
            return
        if lag <= self.caught_up_lag:
            self.done = True
            seconds = max(1e-9, now - self.started_at)
            log.info(
                "caught up; training live",
                extra={"pipeline": self.name, "events": self.consumed,
                       "seconds": round(seconds, 1),
                       "events_per_s": round(self.consumed / seconds)},
            )  # fmt: skip
            return
        if now - self.last_at < self.every_s:
            return
        dt = now - self.last_at
        rate = (self.consumed - self.consumed_at_last) / dt
        gaining = (self.last_lag - lag) / dt  # events/s the lag shrinks (live ones keep coming)
        eta = f"{lag / gaining:.0f}s" if gaining > 0 else "unknown (not gaining)"
        log.info(
            f"catching up {_bar(self.consumed / max(1, self.consumed + lag))}",
            extra={"pipeline": self.name, "behind": lag, "events_per_s": round(rate),
                   "eta": eta},
        )  # fmt: skip
        self.last_at, self.last_lag, self.consumed_at_last = now, lag, self.consumed
