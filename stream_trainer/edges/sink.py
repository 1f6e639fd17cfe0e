"""One producer per pipeline for its dead-letter and output topics.

``flush()`` is called before offsets are committed, so nothing the pipeline sent
for a committed offset can be lost.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream_trainer.edges.admin import unreachable
from stream_trainer.errors import BrokerError
from stream_trainer.events.decode import Rejected
from stream_trainer.pipeline.ports import Record


class KafkaSink:
    def __init__(
        self, bootstrap: str, client_id: str = "stream-trainer-sink", **security: Any
    ) -> None:
        self.bootstrap = bootstrap
        try:
            self.producer = KafkaProducer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                acks="all",
                linger_ms=5,
                retries=5,
                max_request_size=8 << 20,
                # Idempotent producer ids do not survive a restart of the local (in-memory)
                # broker; exactly-once effects come from checkpoints + offsets instead.
                enable_idempotence=False,
                **security,
            )
        except (KafkaError, OSError) as err:
            raise unreachable(bootstrap, err) from None

    def _send(self, topic: str, **message: Any) -> None:
        """``producer.send``, whose own failures (too large, no metadata in time) are
        BrokerErrors; delivery failures surface in :meth:`flush`."""
        try:
            self.producer.send(topic, **message)
        except KafkaError as err:
            raise BrokerError(f"send to {topic} at {self.bootstrap}: {err!r}") from err

    def dead_letter(self, topic: str, rec: Record, why: Rejected) -> None:
        """The original bytes and key, with why and where from in the headers."""
        headers = [
            ("reason", why.reason.encode()),
            ("detail", why.detail.encode("utf-8", "replace")),
            ("source_topic", rec.topic.encode()),
            ("source_partition", str(rec.partition).encode()),
            ("source_offset", str(rec.offset).encode()),
        ]
        self._send(topic, value=rec.value or b"", key=rec.key, headers=headers)

    def output(self, topic: str, key: str | None, doc: Mapping[str, Any]) -> None:
        """One JSON document (a prediction) to ``topic``."""
        self._send(
            topic,
            key=key.encode() if key is not None else None,
            value=json.dumps(doc, separators=(",", ":")).encode(),
        )

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until everything sent is delivered; BrokerError when it is not in time."""
        try:
            self.producer.flush(timeout=timeout_s)
        except KafkaError as err:
            raise BrokerError(f"could not deliver to {self.bootstrap}: {err}") from err

    def close(self) -> None:
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
