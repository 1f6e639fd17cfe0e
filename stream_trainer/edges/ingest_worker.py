"""An ingest worker process (see ingest.py for the design): fetch with a consumer of its
own, decode and validate a whole poll, compute the duplicate digests and, for a stateless
featurizer, make the examples; send each poll to the trainer as one :class:`Polled`
message, and take :class:`Command` messages (assign, rewind) from it. The trainer's side,
which starts, feeds and replaces these processes: ingest.py.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from typing import Any

import msgspec

from stream_trainer.config import KafkaSettings
from stream_trainer.edges.consumer import BEGINNING, consumer_config
from stream_trainer.stopping import ignore_stop_signals

log = logging.getLogger(__name__)

QUEUE_DEPTH = 4  # decoded polls a worker holds while the trainer is busy
HIGHWATER_EVERY_S = 1.0  # how often a worker reports high watermarks


class Polled(msgspec.Struct, array_like=True):
    """One worker poll: records as columns, each value decoded (an event, or a reject)."""

    epoch: int
    tps: list[tuple[str, int]] = []
    ends: list[int] = []  # per partition: its last offset in this poll, plus one
    tpi: list[int] = []  # per record: index into tps
    offsets: list[int] = []
    timestamps: list[int] = []
    keys: list[bytes | None] = []
    values: list[bytes | None] = []
    events: list[dict[str, Any] | None] = []  # None where rejected
    rejects: list[tuple[int, str, str]] = []  # (row, reason, detail)
    digests: list[int] = []
    # (topic, partition, the worker's position, the high watermark), read together
    highwater: list[tuple[str, int, int, int]] = []
    error: str = ""
    # made by the worker (a stateless featurizer): per input (name, dtype, shape, bytes)
    # and the targets (dtype, shape, bytes), a row per accepted event; ``events`` is then
    # empty (the trainer needs the examples, not the events)
    columns: list[tuple[str, str, list[int], bytes]] = []
    targets: tuple[str, list[int], bytes] | None = None


class Command(msgspec.Struct, array_like=True):
    what: str  # "assign", "rewind"
    epoch: int = 0
    starts: list[tuple[str, int, int]] = []  # (topic, partition, offset | BEGINNING | COMMITTED)


def _worker(
    conn: Connection,
    kafka: KafkaSettings,
    group_id: str,
    client_id: str,
    security: Mapping[str, Any],
    decoder_spec: tuple[str, tuple[str, ...], int, dict[str, Any] | None],
    featurizer_spec: tuple[str, Any] | None,
    log_setup: tuple[str, str],
) -> None:
    """A worker's whole life: commands in, decoded polls out, until the trainer goes.
    With ``featurizer_spec`` (kind, the pipeline's ``featurizer:``), a stateless
    featurizer's examples go out instead of the events."""
    ignore_stop_signals()  # the trainer decides when to stop (a group SIGTERM: it says so)
    from stream_trainer.log import setup_logging

    setup_logging(*log_setup)  # the trainer's level and format, to the same stderr
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from stream_trainer.domains.decoders import batch_decoder
    from stream_trainer.events import Rejected
    from stream_trainer.events.dedup import digest

    kind, channels, max_bytes, wire = decoder_spec
    decode = batch_decoder(kind, channels=channels, max_bytes=max_bytes, wire=wire)
    featurizer = None
    if featurizer_spec is not None:
        from stream_trainer.models.registry import build_featurizer

        featurizer = build_featurizer(*featurizer_spec)
    consumer = KafkaConsumer(**consumer_config(kafka, group_id, client_id), **dict(security))
    encode = msgspec.msgpack.Encoder().encode
    commands = msgspec.msgpack.Decoder(Command).decode
    out: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_DEPTH)

    def send() -> None:
        while (blob := out.get()) is not None:
            try:
                conn.send_bytes(blob)
            except OSError:  # the trainer is gone
                os._exit(0)

    threading.Thread(target=send, daemon=True, name="ingest-send").start()
    # what the worker has built lives as long as it does: out of the collector's sight (a
    # full collection walked all of it, and the stream waited: scripts/gc_pause.py; the
    # service does the same for the trainer)
    gc.collect()
    gc.freeze()
    epoch, owned, reported = 0, False, 0.0
    while True:
        try:
            while conn.poll(0.0 if owned else 0.1):
                cmd = commands(conn.recv_bytes())
                log.debug("ingest command", extra={"what": cmd.what, "epoch": cmd.epoch,
                                                   "starts": repr(cmd.starts)[:200]})  # fmt: skip
                if cmd.what == "assign":
                    epoch = cmd.epoch
                    tps = [TopicPartition(t, p) for t, p, _ in cmd.starts]
                    consumer.assign(tps)
                    owned = bool(tps)
                    for tp, (_, _, start) in zip(tps, cmd.starts, strict=True):
                        if start == BEGINNING:
                            consumer.seek_to_beginning(tp)
                        elif start >= 0:
                            consumer.seek(tp, start)
                elif cmd.what == "rewind":
                    for t, p, _ in cmd.starts:
                        consumer.seek_to_beginning(TopicPartition(t, p))
        except (EOFError, OSError):  # the trainer is gone
            break
        if not owned:
            continue
        try:
            fetched = consumer.poll(timeout_ms=100, max_records=kafka.max_poll_records)
        except KafkaError as err:
            log.debug("ingest poll failed", extra={"error": repr(err)[:200]})
            out.put(encode(Polled(epoch, error=f"poll from {kafka.bootstrap_servers}: {err!r}")))
            time.sleep(0.5)
            continue
        now = time.monotonic()
        if now - reported >= HIGHWATER_EVERY_S:  # the trainer's lag, and logs that went back
            reported = now
            highwater = _watermarks(consumer)
            if not fetched and highwater:
                out.put(encode(Polled(epoch, highwater=highwater)))
        else:
            highwater = []
        if not fetched:
            continue
        msg = Polled(epoch, highwater=highwater)
        for i, (tp, recs) in enumerate(fetched.items()):
            if not recs:
                continue
            msg.tps.append((tp.topic, tp.partition))
            msg.ends.append(recs[-1].offset + 1)
            msg.tpi.extend([i] * len(recs))
            msg.offsets.extend([r.offset for r in recs])
            msg.timestamps.extend([r.timestamp for r in recs])
            msg.keys.extend([r.key for r in recs])
            msg.values.extend([r.value for r in recs])
        results = decode(msg.values, msg.timestamps)
        for row, (value, result) in enumerate(zip(msg.values, results, strict=True)):
            if type(result) is dict:
                msg.events.append(result)
                assert value is not None  # (a tombstone never decodes to an event)
                msg.digests.append(digest(value))
            else:
                assert isinstance(result, Rejected)
                msg.events.append(None)
                msg.digests.append(0)
                msg.rejects.append((row, result.reason, result.detail))
        if featurizer is not None:
            _make(msg, featurizer)
        out.put(encode(msg))
    out.put(None)
    try:
        consumer.close(autocommit=False)
    except Exception:  # noqa: BLE001 - exiting anyway
        pass


def _make(msg: Polled, featurizer: Any) -> None:
    """Featurize the poll's accepted events into ``msg.columns`` / ``msg.targets``. An
    event the featurizer fails on is rejected alone (``featurizer_error``, as the
    trainer's featurizing rejects a batch); the others still make their examples."""
    from stream_trainer.events import reasons

    rows = [row for row, ev in enumerate(msg.events) if ev is not None]
    if not rows:
        return
    try:
        fb = _featurize(featurizer, [msg.events[row] for row in rows])
    except Exception as err:  # noqa: BLE001 - user featurizers may fail on odd events
        log.warning(
            "featurizer failed; the events it fails on sent to dead letters",
            extra={"worker": mp.current_process().name, "error": repr(err)[:200]},
        )
        kept = []
        for row in rows:
            try:
                _featurize(featurizer, [msg.events[row]])
                kept.append(row)
            except Exception as one:  # noqa: BLE001
                msg.rejects.append((row, reasons.FEATURIZER_ERROR, repr(one)[:200]))
        rows = kept
        try:
            fb = _featurize(featurizer, [msg.events[row] for row in rows])
        except Exception as again:  # noqa: BLE001 - fails together, not alone: all of them
            msg.rejects.extend((row, reasons.FEATURIZER_ERROR, repr(again)[:200]) for row in rows)
            rows = []
        if not rows:
            msg.events = [None] * len(msg.events)
            return
    msg.columns = [(k, v.dtype.str, list(v.shape), v.tobytes()) for k, v in fb.inputs.items()]
    t = fb.targets
    msg.targets = (t.dtype.str, list(t.shape), t.tobytes())
    msg.events = []


def _featurize(featurizer: Any, events: list[Any]) -> Any:
    fb = featurizer.featurize(events)
    if len(fb) != len(events):
        raise ValueError(
            f"a stateless featurizer made {len(fb)} examples of {len(events)} events "
            "(it must make one per event, in order: or leave stateless unset)"
        )
    return fb


def _watermarks(consumer: Any) -> list[tuple[str, int, int, int]]:
    """(topic, partition, position, high watermark) of the worker's partitions, where
    both are known now (never blocking on the broker)."""
    out = []
    for tp in consumer.assignment():
        hw = consumer.highwater(tp)
        try:
            pos = consumer.position(tp, timeout_ms=0)
        except Exception:  # noqa: BLE001 - a position being reset: leave it out
            pos = None
        if hw is not None and pos is not None:
            out.append((tp.topic, tp.partition, pos, hw))
    return out
