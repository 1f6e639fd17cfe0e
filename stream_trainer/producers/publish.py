"""Publish events to Kafka at a target rate, with progress (the I/O edge of producers)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream_trainer.edges.admin import check_reachable, unreachable
from stream_trainer.errors import StreamTrainerError
from stream_trainer.producers.progress import Progress

log = logging.getLogger(__name__)


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

    ``rate`` > 0 paces sends to that many events per second (asides not counted). Returns
    the count sent to ``topic``; ``asides``, when given, receives the count per aside topic.
    """
    check_reachable(bootstrap)
    try:
        producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            client_id="stream-trainer-produce",
            linger_ms=linger_ms,
            batch_size=256 << 10,
            acks=1,
            max_request_size=8 << 20,
        )
    except (KafkaError, OSError) as err:
        raise unreachable(bootstrap, err) from None
    bar = Progress(f"produce {topic}", total, enabled=progress)
    sent = 0
    t0 = time.monotonic()
    try:
        for ev in events:
            if stop is not None and stop.is_set():
                break
            if isinstance(ev, Aside):
                producer.send(ev.topic, value=_json(ev.event), key=_key(ev.event, ev.key_field))
                if asides is not None:
                    asides[ev.topic] = asides.get(ev.topic, 0) + 1
                continue
            if isinstance(ev, bytes):
                value, key = ev, None
            elif isinstance(ev, tuple):
                key, value = ev
            else:
                value, key = _json(ev), _key(ev, key_field)
            producer.send(topic, value=value, key=key)
            sent += 1
            bar.update()
            if rate > 0 and sent % max(1, int(rate // 100)) == 0:
                ahead = t0 + sent / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # may be the main thread: never stop.wait()
        producer.flush(timeout=60)
    except KafkaError as err:
        raise StreamTrainerError(f"producing to {topic} at {bootstrap} failed: {err}") from None
    finally:
        bar.close()
        producer.close(timeout=5)
    return sent


def _json(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def _key(ev: dict[str, Any], field: str | None) -> bytes | None:
    return str(ev[field]).encode() if field and field in ev else None
