"""Publish events to Kafka at a target rate, with progress (the I/O edge of producers)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError, for_code
from kafka.partitioner.default import murmur2
from kafka.protocol.producer.produce import ProduceRequest

from stream_trainer.edges.admin import check_reachable, unreachable
from stream_trainer.errors import StreamTrainerError
from stream_trainer.producers.batches import record_batch
from stream_trainer.producers.progress import Progress

log = logging.getLogger(__name__)
_Topic = ProduceRequest.TopicProduceData
_Partition = _Topic.PartitionProduceData


@dataclass(frozen=True, slots=True)
class Aside:
    """An event for another topic, sent in the stream's order but neither paced nor counted
    as one of its events (a delayed label beside its impressions)."""

    topic: str
    event: dict[str, Any]
    key_field: str | None = None


Sendable = dict[str, Any] | bytes | tuple[bytes | None, bytes] | Aside


def publish(
    bootstrap: str,
    topic: str,
    events: Iterable[Sendable],
    *,
    key_field: str | None = None,
    rate: float = 0.0,
    total: int | None = None,
    stop: threading.Event | None = None,
    progress: bool = True,
    linger_ms: int = 10,
    asides: dict[str, int] | None = None,
) -> int:
    """Send ``events`` and flush: dicts are JSON-encoded and keyed by ``key_field``;
    bytes, or ``(key, value)`` byte pairs, go as they are; an :class:`Aside` goes to its
    own topic, in the stream's order.

    ``rate`` > 0 paces sends to that many events per second (asides not counted): each
    event is stamped with the time it is due and leaves, with the others due meanwhile,
    at most ``linger_ms`` later. Keyed events go to their key's partition (the Java
    client's murmur2, as kafka-python's), the others to one partition per chunk, in
    turn. Returns the count sent to ``topic``; ``asides``, when given, receives the
    count per aside topic.
    """
    check_reachable(bootstrap)
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="stream-trainer-produce",
            acks=1,
            max_request_size=8 << 20,
        )
    except (KafkaError, OSError) as err:
        raise unreachable(bootstrap, err) from None
    bar = Progress(f"produce {topic}", total, enabled=progress)
    out = _Chunks(producer, bootstrap)
    linger = max(0.001, linger_ms / 1000.0)
    sent = 0
    t0, wall0 = time.monotonic(), time.time()
    held_since: float | None = None  # when the events held began to wait
    try:
        for ev in events:
            if stop is not None and stop.is_set():
                break
            if isinstance(ev, Aside):
                # stamped as the stream's next event (due times when paced): in its order
                stamp = wall0 + sent / rate if rate > 0 else time.time()
                out.add(ev.topic, _key(ev.event, ev.key_field), _json(ev.event), stamp)
                if asides is not None:
                    asides[ev.topic] = asides.get(ev.topic, 0) + 1
                continue
            if isinstance(ev, bytes):
                value, key = ev, None
            elif isinstance(ev, tuple):
                key, value = ev
            else:
                value, key = _json(ev), _key(ev, key_field)
            if rate > 0:  # wait until it is due; what is held leaves ``linger`` after its first
                due = sent / rate
                while True:
                    now = time.monotonic() - t0
                    if held_since is not None and now - held_since >= linger:
                        out.flush()
                        held_since = None
                    if due <= now:
                        break
                    # may be the main thread: never stop.wait()
                    time.sleep((due if held_since is None else held_since + linger) - now)
                stamp = wall0 + due
                held_since = now if held_since is None else held_since
            else:
                stamp = time.time()
            out.add(topic, key, value, stamp)
            sent += 1
            bar.update()
            if rate <= 0 and out.held >= CHUNK_EVENTS:
                out.flush()
        out.flush()
        out.drain()
    except KafkaError as err:
        raise StreamTrainerError(f"producing to {topic} at {bootstrap} failed: {err}") from None
    finally:
        bar.close()
        producer.close(timeout=5)
    return sent


CHUNK_EVENTS = 2000  # unpaced: events per produce request
MAX_IN_FLIGHT = 5  # produce requests awaiting their answer
RETRY_S = 60.0  # how long a failing request is sent again (a broker restarting)


class _Chunks:
    """Events held per (topic, partition), sent as one record batch each in one produce
    request per broker (``batches.py``), through kafka-python's own connections. A
    request that fails, or a partition that answers with a retriable error, is sent
    again (at-least-once, as kafka-python's retries) for up to ``RETRY_S``."""

    def __init__(self, producer: KafkaProducer, bootstrap: str) -> None:
        self.producer = producer
        self.bootstrap = bootstrap
        self.client = producer._sender._client  # noqa: SLF001 - its connections and IO thread
        self._parts: dict[str, list[int]] = {}
        self._turn: dict[str, int] = {}
        self._held: dict[tuple[str, int], tuple[list[bytes | None], list[bytes], list[int]]] = {}
        self.held = 0
        self._flight: deque[tuple[Any, dict[tuple[str, int], bytes], float]] = deque()

    def _partitions(self, topic: str) -> list[int]:
        parts = self._parts.get(topic)
        if parts is None:
            parts = self._parts[topic] = sorted(self.producer._wait_on_metadata(topic, 60_000))  # noqa: SLF001
            self._turn[topic] = 0
        return parts

    def add(self, topic: str, key: bytes | None, value: bytes, stamp_s: float) -> None:
        parts = self._partitions(topic)
        if key is None:
            p = parts[self._turn[topic] % len(parts)]
        else:
            p = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        keys, values, stamps = self._held.setdefault((topic, p), ([], [], []))
        keys.append(key)
        values.append(value)
        stamps.append(int(stamp_s * 1000))
        self.held += 1

    def flush(self) -> None:
        if not self.held:
            return
        batches = {tp: record_batch(*cols) for tp, cols in self._held.items()}
        self._held.clear()
        self.held = 0
        for topic in {t for t, _ in batches}:
            self._turn[topic] = self._turn.get(topic, 0) + 1
        self._send(batches, time.monotonic() + RETRY_S)

    def _send(self, batches: dict[tuple[str, int], bytes], deadline: float) -> None:
        while (by_leader := self._by_leader(batches)) is None:
            self._back_off(deadline, "no leader")
        for node, part in by_leader.items():
            while len(self._flight) >= MAX_IN_FLIGHT:
                self._settle_oldest()
            topics: dict[str, list[Any]] = {}
            for (t, p), raw in part.items():
                topics.setdefault(t, []).append(_Partition(index=p, records=raw))
            request = ProduceRequest(
                transactional_id=None, acks=1, timeout_ms=30_000,
                topic_data=[_Topic(name=t, partition_data=ps) for t, ps in topics.items()],
                min_version=3, max_version=9,
            )  # fmt: skip
            try:
                future = self.client.send(node, request)
            except (KafkaError, OSError, RuntimeError) as err:
                # a connection that closed under the send raises here, not in the future
                # ("Transport closed for writes", seen under load): sent again, as a
                # failed future would be
                self._retry(part, deadline, repr(err))
                continue
            self.producer._sender.wakeup()  # noqa: SLF001 - its thread drives the network
            self._flight.append((future, part, deadline))

    def _by_leader(
        self, batches: dict[tuple[str, int], bytes]
    ) -> dict[Any, dict[tuple[str, int], bytes]] | None:
        """The batches per leader broker; None while a partition has none."""
        out: dict[Any, dict[tuple[str, int], bytes]] = {}
        for (t, p), raw in batches.items():
            leader = self.producer._metadata.leader_for_partition(TopicPartition(t, p))  # noqa: SLF001
            if leader is None or leader == -1:
                return None
            out.setdefault(leader, {})[(t, p)] = raw
        return out

    def _settle_oldest(self) -> None:
        future, part, deadline = self._flight.popleft()
        until = time.monotonic() + 30.0
        while not future.is_done and time.monotonic() < until:
            time.sleep(0.0005)
        if not future.is_done or future.failed():
            why = "no answer" if not future.is_done else repr(future.exception)
            self._retry(part, deadline, why)
            return
        again: dict[tuple[str, int], bytes] = {}
        for tr in future.value.responses:
            for pr in tr.partition_responses:
                if pr.error_code == 0:
                    continue
                err = for_code(pr.error_code)
                if not err.retriable:
                    raise StreamTrainerError(
                        f"producing to {tr.name}:{pr.index} at {self.bootstrap} failed: "
                        f"{err.__name__}"
                    )
                again[(tr.name, pr.index)] = part[(tr.name, pr.index)]
        if again:
            self._retry(again, deadline, "retriable error")

    def _retry(self, batches: dict[tuple[str, int], bytes], deadline: float, why: str) -> None:
        self._back_off(deadline, why)
        self._send(batches, deadline)

    def _back_off(self, deadline: float, why: str) -> None:
        """Past ``deadline`` an error; else a metadata refresh (a leader may have moved)
        and a pause before the next try."""
        if time.monotonic() > deadline:
            raise StreamTrainerError(
                f"producing to {self.bootstrap} failed for {RETRY_S:.0f} s ({why}); "
                "is the broker up?"
            )
        log.debug("produce request failed; sending again", extra={"why": why[:200]})
        self.producer._metadata.request_update()  # noqa: SLF001
        self.producer._sender.wakeup()  # noqa: SLF001
        time.sleep(0.2)

    def drain(self) -> None:
        while self._flight:
            self._settle_oldest()


def _json(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def _key(ev: dict[str, Any], field: str | None) -> bytes | None:
    return str(ev[field]).encode() if field and field in ev else None
