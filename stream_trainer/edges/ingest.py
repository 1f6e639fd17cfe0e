"""Ingest beside the trainer: Kafka fetch + decode + validation + duplicate digests in
worker processes, like torch's DataLoader workers; the trainer gets decoded polls.

Why processes: kafka-python's record parsing alone costs about as much Python per event
as everything the trainer does, and one interpreter runs one of them at a time (the
GIL). A worker owns a consumer with a *manual* assignment and no group membership; the
trainer's own consumer stays the group member (assignment, heartbeats, commits) with
every partition paused, so it never fetches. Offsets stay the trainer's alone:

- on an assignment the trainer says where each partition starts (the checkpoint's next
  offset, the log's beginning, or the group's committed offset) and the workers seek
  there; every message a worker sends carries the *epoch* of the assignment it was
  fetched under, and the trainer drops messages of an older epoch;
- on a revoke the trainer checkpoints what it holds (as without workers) and bumps the
  epoch, so nothing fetched for a partition it lost is ever applied;
- offsets are committed by the trainer's consumer after the checkpoint holding them is
  durable, exactly as without workers; a worker never commits.

So the exactly-once argument is unchanged: a record is applied by the trainer in
offset order or not at all, and whatever was fetched but not applied is fetched again
from the trainer's next offset. Per-key featurizer state stays in the trainer (it is
checkpointed with the model there); the workers are stateless and restartable: one that
dies is started again from the trainer's positions (not once the daemon is stopping).
A stop signalled to the whole process group is the trainer's alone to act on: the
workers ignore SIGTERM and SIGINT and end when the trainer closes their pipes.

A stateless featurizer (clicks', or one that sets ``stateless = True``) runs in the
workers too, where the trainer needs only the examples (no joined labels, no output
records, no per-key models: ``Pipeline.worker_featurizer``): a poll then travels as its
examples' arrays, and the trainer gathers its batches from them
(:func:`~stream_trainer.features.base.gather`). The examples are the same as the
trainer's featurizer would make (``tests/test_worker_features.py``); an event the
featurizer fails on is dead-lettered alone.

The hand-off is one msgpack message per fetched poll over a pipe, not a shared-memory
ring: the payload (raw values, events or examples) is small next to the Python work it
moves off the trainer. ``make bench``'s ingest-worker rows measure the whole effect.

This module is the trainer's side (:class:`IngestSource`); the worker process and the
messages it exchanges with the trainer: ingest_worker.py.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Mapping
from itertools import repeat
from multiprocessing.connection import Connection, wait
from typing import Any, cast

import msgspec
import numpy as np

from stream_trainer.config import KafkaSettings
from stream_trainer.edges.consumer import BEGINNING
from stream_trainer.edges.ingest_worker import Command, Polled, _worker
from stream_trainer.errors import BrokerError
from stream_trainer.events.decode import Rejected
from stream_trainer.features.base import Made
from stream_trainer.log import current as log_current
from stream_trainer.pipeline.ports import TP, Record
from stream_trainer.stopping import quiet_children

log = logging.getLogger(__name__)

JOIN_WAIT_S = 0.25  # how long the trainer's group poll waits while the group (re)joins


class DecodedPoll(list[Record]):
    """A poll's records, each with its decoded value and duplicate digest: what
    :meth:`Pipeline.handle <stream_trainer.pipeline.core.Pipeline.handle>` would
    otherwise compute itself."""

    decoded: list[Any]
    digests: list[int]


class _Worker:
    def __init__(self, ctx: Any, args: tuple[Any, ...], index: int, name: str) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker, args=(child, *args), name=f"ingest-{name}-{index}", daemon=True
        )
        self.process.start()
        child.close()
        self.starts: list[tuple[str, int, int]] = []

    def send(self, cmd: Command) -> None:
        try:
            self.conn.send_bytes(msgspec.msgpack.encode(cmd))
        except OSError:
            pass  # dead: the next poll finds out and starts another

    def stop(self) -> None:
        self.conn.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def auto_workers(pipelines: int, cores: int | None = None) -> int:
    """``ingest.workers: auto``: the cores beside one for the trainers, shared out over
    the pipelines (the daemon passes its pipelines times the replicas on this machine),
    at least one worker each, at most 8. On 2 cores that is one worker: in all three
    `make bench` runs of 2026-12-06 (clicks, the same run's rows) one worker trained
    more events/s than two (65,613 vs 60,947; 65,279 vs 61,164; 64,930 vs 58,834)
    with less CPU at low rates; a run on 2026-12-01 had put two ahead (+17 %).

    >>> auto_workers(1, cores=2), auto_workers(3, cores=2), auto_workers(1, cores=16)
    (1, 1, 8)
    """
    cores = cores or os.cpu_count() or 1
    return max(1, min(8, (cores - 1) // pipelines))


class IngestSource:
    """A :class:`~stream_trainer.pipeline.ports.Source` whose records are fetched and
    decoded by ``workers`` processes; ``group`` (a paused KafkaSource) is the
    consumer-group member. ``positions`` are the trainer's next offsets to read."""

    def __init__(
        self,
        group: Any,
        kafka: KafkaSettings,
        workers: int,
        *,
        group_id: str,
        client_id: str,
        security: Mapping[str, Any],
        decoder_spec: tuple[str, tuple[str, ...], int, dict[str, Any] | None],
        positions: Callable[[], Mapping[TP, int]],
        name: str,
        featurizer_spec: tuple[str, Any] | None = None,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self.group = group
        self.stopping = stopping  # the daemon is stopping: a worker that ends stays ended
        self.kafka = kafka
        self.positions = positions
        self.name = name
        self.epoch = 0
        self._decode = msgspec.msgpack.Decoder(Polled).decode
        self._args = (kafka, group_id, client_id, dict(security), decoder_spec,
                      featurizer_spec, log_current())  # fmt: skip
        self._ctx = mp.get_context("forkserver")
        self._ctx.set_forkserver_preload(["stream_trainer.edges.ingest"])
        self.workers = [self._start(i) for i in range(workers)]
        log.info(
            "ingest workers started",
            extra={
                "pipeline": name,
                "pids": ",".join(str(w.process.pid) for w in self.workers),
                # they send examples (a stateless featurizer's), or events
                "featurize": "yes" if featurizer_spec is not None else "no",
            },
        )
        self._received: dict[TP, int] = {}
        self._highwater: dict[TP, tuple[int, int]] = {}
        group.fetcher = self

    @property
    def assignment(self) -> list[TP]:
        return self.group.assignment

    def _start(self, index: int) -> _Worker:
        with quiet_children():  # a SIGTERM to the process group is the trainer's to act on
            return _Worker(self._ctx, self._args, index, self.name)

    # -- called by the group member (on the trainer's thread, inside its poll) ----------
    def assign(self, starts: Mapping[TP, int]) -> None:
        """A new assignment: ``starts`` per partition (an offset, BEGINNING, COMMITTED)."""
        self.epoch += 1
        self._received = {tp: o for tp, o in starts.items() if o >= 0}
        ordered = sorted(starts)
        for i, w in enumerate(self.workers):
            mine = ordered[i :: len(self.workers)]
            w.starts = [(t, p, starts[(t, p)]) for t, p in mine]
            w.send(Command("assign", self.epoch, w.starts))

    def revoke(self) -> None:
        """Partitions are leaving: whatever the workers fetched for them is void."""
        self.assign({})

    # -- the Source interface -----------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        # Group work only: every partition is paused. While the group (re)joins, wait in
        # the poll: kafka-python 3 sends a new JoinGroup when the one in flight finished
        # between two polls, so a join only completes inside a poll that awaits it.
        self.group.poll(JOIN_WAIT_S if self.group.rebalancing else 0.0)
        limit = max_records or self.kafka.max_poll_records
        out = DecodedPoll()
        out.decoded, out.digests = [], []
        # (typeshed's wait() returns any waitable; it returns some of those it was given)
        ready = cast(list[Connection], wait([w.conn for w in self.workers], timeout_s))
        error = ""
        while ready and len(out) < limit:
            for conn in ready:
                error = self._receive(conn, out) or error
            if len(out) >= limit:
                break
            ready = [w.conn for w in self.workers if w.conn.poll(0)]  # a dead one: replaced
        if error and not out:
            raise BrokerError(error)
        return out

    def _receive(self, conn: Connection, out: DecodedPoll) -> str:
        try:
            msg = self._decode(conn.recv_bytes())
        except (EOFError, OSError):
            self._restart(conn)
            return ""
        if msg.epoch != self.epoch:
            return ""  # fetched under an assignment that has ended
        if msg.error:
            return msg.error
        tps = msg.tps
        for t, p, pos, hw in msg.highwater:
            self._highwater[(t, p)] = (pos, hw)
        out.extend(map(Record, *self._columns(msg)))
        out.digests.extend(msg.digests)
        out.decoded.extend(decoded(msg))
        self._received.update(zip(tps, msg.ends, strict=True))
        return ""

    @staticmethod
    def _columns(msg: Polled) -> tuple[list[Any], ...]:
        tps = msg.tps
        topics = [tps[i][0] for i in msg.tpi]
        parts = [tps[i][1] for i in msg.tpi]
        return topics, parts, msg.offsets, msg.timestamps, msg.keys, msg.values

    def _restart(self, conn: Connection) -> None:
        i = next(i for i, w in enumerate(self.workers) if w.conn is conn)
        dead = self.workers[i]
        if self.stopping():  # nothing more to fetch: not an error, and not restarted
            log.info(
                "ingest worker ended during the stop",
                extra={"pipeline": self.name, "exitcode": dead.process.exitcode},
            )
            dead.stop()
            del self.workers[i]
            return
        log.error(
            "ingest worker died; starting another from the trainer's positions",
            extra={"pipeline": self.name, "exitcode": dead.process.exitcode},
        )
        dead.stop()
        self.workers[i] = w = self._start(i)
        log.info("ingest worker started", extra={"pipeline": self.name, "pid": w.process.pid})
        held = self.positions()
        w.starts = [(t, p, held.get((t, p), s)) for t, p, s in dead.starts]
        w.send(Command("assign", self.epoch, w.starts))

    def commit(self, offsets: Mapping[TP, int], timeout_ms: int | None = None) -> None:
        self.group.commit(offsets, timeout_ms)

    def watermarks(self) -> dict[TP, tuple[int, int]]:
        """(position, high watermark) per partition. The high watermark is a worker's
        last reading (once a second), taken with the worker's position then; the
        position is the trainer's (what it has received) unless that passed the
        worker's position of the reading: so the lag counts what is in flight, and a
        stale reading never looks like a log that went back."""
        out = {}
        for tp in self.group.assignment:
            mark, pos = self._highwater.get(tp), self._received.get(tp)
            if mark is None or pos is None:
                continue
            worker_pos, hw = mark
            out[tp] = (min(pos, worker_pos), hw)
        catch_up = getattr(self.group, "catch_up", None)
        if catch_up is not None:  # backfill progress, as the group member would report it
            catch_up.observe(out, time.monotonic(), expected=len(self.group.assignment))
        return out

    def rewind(self, tp: TP) -> None:
        for w in self.workers:
            if any((t, p) == tp for t, p, _ in w.starts):
                w.send(Command("rewind", self.epoch, [(tp[0], tp[1], BEGINNING)]))
        self._received.pop(tp, None)
        self._highwater.pop(tp, None)

    def close(self) -> None:
        """Stop the workers (whoever made the group member closes it)."""
        for w in self.workers:
            w.stop()


def decoded(msg: Polled) -> list[Any]:
    """Per record of a worker's poll: its event, a Rejected, or, where the worker
    featurized, ``(block, j)``: the ``j``-th example of the poll's :class:`Made` block."""
    rejected = {row: Rejected(reason, detail) for row, reason, detail in msg.rejects}
    if msg.targets is None:  # (the message's own list: nothing else holds it)
        out: list[Any] = msg.events
        for row, rej in rejected.items():
            out[row] = rej
        return out
    block = _block(msg)
    if not rejected:
        return list(zip(repeat(block), range(len(msg.offsets))))
    out, j = [], 0
    for row in range(len(msg.offsets)):
        why: Rejected | tuple[Made, int] | None = rejected.get(row)
        if why is None:
            why, j = (block, j), j + 1
        out.append(why)
    return out


def _block(msg: Polled) -> Made:
    """The examples a worker made, as arrays over the message's bytes (read-only views:
    :func:`~stream_trainer.features.base.gather` copies what it takes)."""
    assert msg.targets is not None
    dtype, shape, data = msg.targets
    inputs = {k: np.frombuffer(b, np.dtype(t)).reshape(dims) for k, t, dims, b in msg.columns}
    return Made(inputs, np.frombuffer(data, np.dtype(dtype)).reshape(shape))


def worker_count(setting: int | str, pipelines: int) -> int:
    return auto_workers(pipelines) if setting == "auto" else int(setting)


__all__ = ["DecodedPoll", "IngestSource", "auto_workers"]
