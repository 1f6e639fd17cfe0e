"""What the trainer's group member (source.py) and the ingest workers (ingest.py,
ingest_worker.py) share of a Kafka consumer: its settings and the start positions a
partition can be given. Below them, so that none imports another."""

from __future__ import annotations

from typing import Any

from stream_trainer.config import KafkaSettings

BEGINNING = -2  # a start position: the log's first offset
COMMITTED = -1  # a start position: the group's committed offset, else auto_offset_reset


def consumer_config(settings: KafkaSettings, group_id: str, client_id: str) -> dict[str, Any]:
    """The daemon's KafkaConsumer settings (the bench measures the bare client with them)."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "group_id": group_id,
        "client_id": client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "max_poll_records": settings.max_poll_records,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "request_timeout_ms": max(settings.request_timeout_ms, settings.session_timeout_ms + 1000),
        "max_partition_fetch_bytes": 4 << 20,
        "fetch_max_bytes": 64 << 20,
    }
