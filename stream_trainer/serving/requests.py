"""Serving over Kafka: events on ``requests_topic`` are scored into ``predictions_topic``.

Each prediction record keeps the request's key (so a reply lands in the partition its
asker reads) and carries the model version and the request's partition and offset.
Refused requests get a record too, with the reason, so no asker waits for nothing.
At least once: offsets are committed after the predictions are flushed; a restart may
score a request again (with newer weights), never skip one. A thread of its own with a
consumer group of its own: it never holds up training, nor training it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stream_trainer.errors import StreamTrainerError
from stream_trainer.pipeline.ports import TP, Record, Sink, Source
from stream_trainer.serving.scorer import Scorer

log = logging.getLogger(__name__)

COMMIT_EVERY_S = 1.0
OnScored = Callable[[int], None]


def prediction_docs(
    scorer: Scorer, records: list[Record]
) -> list[tuple[str | None, dict[str, Any]]]:
    """(key, document) per request record, in order."""
    docs: list[Any] = []
    for rec in records:
        try:
            docs.append(json.loads(rec.value or b"", parse_constant=_refuse))
        except (ValueError, RecursionError) as err:
            docs.append(_Bad(str(err)[:160]))
    res = scorer.score([None if isinstance(d, _Bad) else d for d in docs])
    why = dict(res.errors)
    out = []
    for i, rec in enumerate(records):
        key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
        doc: dict[str, Any] = {
            "model_version": res.version,
            "request_partition": rec.partition,
            "request_offset": rec.offset,
        }
        if isinstance(docs[i], _Bad):
            doc.update(error="not_json", detail=docs[i].detail)
        elif i in why:
            doc.update(error=why[i].reason, detail=why[i].detail)
        else:
            doc["score"] = res.scores[i]
        if isinstance(docs[i], dict) and "request_id" in docs[i]:
            doc["request_id"] = docs[i]["request_id"]
        out.append((key, doc))
    return out


class _Bad:
    def __init__(self, detail: str) -> None:
        self.detail = detail


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def serve_requests(
    scorer: Scorer,
    source: Source,
    sink: Sink,
    topic: str,
    stop: threading.Event,
    *,
    on_scored: OnScored = lambda n: None,
    poll_s: float = 0.05,
) -> None:
    """Until ``stop``: poll requests, score them in one batch per poll, produce, and
    commit (after a flush) about every second. Broker failures back off and retry."""
    pending: dict[TP, int] = {}
    last_commit = time.monotonic()
    backoff = 0.0
    while not stop.is_set():
        try:
            records = source.poll(poll_s, max_records=1024)
            if records:
                scored = 0
                for key, doc in prediction_docs(scorer, records):
                    sink.output(topic, key, doc)
                    scored += "score" in doc
                on_scored(scored)
                for r in records:
                    pending[(r.topic, r.partition)] = r.offset + 1
            if pending and time.monotonic() - last_commit >= COMMIT_EVERY_S:
                sink.flush()
                source.commit(pending)
                pending, last_commit = {}, time.monotonic()
            backoff = 0.0
        except StreamTrainerError as err:  # BrokerError: the loop carries on
            backoff = min(5.0, max(0.1, backoff * 2))
            log.warning("serving requests failed; retrying", extra={"error": str(err)[:200]})
            stop.wait(backoff)
    try:
        if pending:
            sink.flush()
            source.commit(pending)
    except StreamTrainerError as err:
        log.warning("final commit of served requests failed", extra={"error": str(err)[:200]})
