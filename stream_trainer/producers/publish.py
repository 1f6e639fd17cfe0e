"""Publish events to Kafka at a target rate, with progress (the I/O edge of producers)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream_trainer.edges.admin import check_reachable, unreachable
from stream_trainer.errors import StreamTrainerError
from stream_trainer.producers.progress import Progress

log = logging.getLogger(__name__)


Sendable = dict[str, Any] | bytes | tuple[bytes | None, bytes]


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
) -> int:
    """Send ``events`` and flush: dicts are JSON-encoded and keyed by ``key_field``;
    bytes, or ``(key, value)`` byte pairs, go as they are.

    ``rate`` > 0 paces sends to that many events per second. Returns the count sent.
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
            if isinstance(ev, bytes):
                value, key = ev, None
            elif isinstance(ev, tuple):
                key, value = ev
            else:
                value = json.dumps(ev, separators=(",", ":")).encode()
                key = str(ev[key_field]).encode() if key_field and key_field in ev else None
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
