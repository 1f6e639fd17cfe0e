"""A consumer-group member that resumes from *next offsets to read* held by the caller.

On every assignment each partition the caller has an offset for is sought to it
(the offset stored in the model's checkpoint), so the model state is exactly-once
with respect to the log. A partition the restored checkpoint does not know was never
learned by that model state: it starts at the log's beginning, whatever the group
committed (a commit may come from a newer checkpoint that was lost). Without any
checkpoint (a fresh model), partitions start from ``source.start_from``: the group's
committed offset (or ``auto_offset_reset``) by default, or the earliest, latest or
first offset at a time (:mod:`~stream_trainer.edges.start`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from stream_trainer.config import KafkaSettings, SourceSettings
from stream_trainer.edges.admin import unreachable
from stream_trainer.edges.consumer import BEGINNING, COMMITTED, consumer_config
from stream_trainer.edges.start import CatchUp, resolve
from stream_trainer.errors import BrokerError
from stream_trainer.pipeline.ports import TP, Record

log = logging.getLogger(__name__)


def offset_and_metadata(offset: int) -> OffsetAndMetadata:
    """kafka-python 2.x has (offset, metadata); 2.1+/3.x add leader_epoch."""
    extra = [-1] * (len(OffsetAndMetadata._fields) - 2)
    return OffsetAndMetadata(offset, "", *extra)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self._call(self.source._revoked, revoked, "revoke")

    def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        self._call(self.source._assigned, assigned, "assignment")

    def _call(
        self, fn: Callable[[list[TP]], None], tps: Sequence[TopicPartition], what: str
    ) -> None:
        """kafka-python swallows a callback's exception into a bare "callback throws an
        error" from the next poll: log it, with its traceback, before it does."""
        self.source.in_rebalance = True
        try:
            fn([(tp.topic, tp.partition) for tp in tps])
        except Exception:
            log.exception(f"partition {what} failed", extra={"partitions": len(tps)})
            raise
        finally:
            self.source.in_rebalance = False


class KafkaSource:
    in_rebalance = False  # inside a rebalance callback (on the consumer's IO thread)
    fetcher: Any = None  # ingest workers (edges/ingest.py) fetch for this group member
    rebalancing = True  # from a revoke (or the start) until the next assignment
    # (class defaults too: the edge tests build a source without __init__)
    start = SourceSettings()  # where partitions without an offset in the model start
    catch_up: CatchUp | None = None

    def __init__(
        self,
        settings: KafkaSettings,
        topics: Sequence[str],
        group_id: str,
        *,
        resume_from: Callable[[list[TP]], Mapping[TP, int]],
        on_revoke: Callable[[list[TP]], None] = lambda tps: None,
        on_assign: Callable[[list[TP]], None] = lambda tps: None,
        restored: Callable[[], bool] = lambda: False,
        client_id: str = "stream-trainer",
        security: Mapping[str, Any] | None = None,
        start: SourceSettings | None = None,
        pipeline: str = "",
    ) -> None:
        self.settings = settings
        self.resume_from = resume_from
        self.on_revoke, self.on_assign = on_revoke, on_assign
        self.restored = restored
        try:
            self.consumer = KafkaConsumer(
                **consumer_config(settings, group_id, client_id), **dict(security or {})
            )
        except (KafkaError, OSError) as err:
            raise unreachable(settings.bootstrap_servers, err) from None
        self.security = dict(security or {})
        self.start = start or SourceSettings()
        self.catch_up = CatchUp(
            pipeline or group_id, self.start.progress_every_seconds, self.start.caught_up_lag
        )
        self.start_at = self._resolve_start(topics, pipeline or group_id)
        self.consumer.subscribe(topics=list(topics), listener=_Listener(self))
        self.assignment: list[TP] = []

    def _assigned(self, tps: list[TP]) -> None:
        start = self.resume_from(tps)
        from_beginning = []
        starts: dict[TP, int] = {}  # for ingest workers: where each partition starts
        for t, p in tps:
            if (t, p) in start:
                starts[(t, p)] = start[(t, p)]
            elif (at := self._start_position((t, p))) is not None:
                starts[(t, p)] = at
            elif self.restored():
                starts[(t, p)] = BEGINNING
                from_beginning.append(f"{t}:{p}")
            else:
                starts[(t, p)] = COMMITTED
        if self.fetcher is not None:  # the workers fetch; this consumer only holds the group
            self.consumer.pause(*[TopicPartition(t, p) for t, p in tps])
            self.fetcher.assign(starts)
        else:
            for (t, p), at in starts.items():
                if at == BEGINNING:
                    self.consumer.seek_to_beginning(TopicPartition(t, p))
                elif at >= 0:
                    self.consumer.seek(TopicPartition(t, p), at)
        self.assignment = sorted(tps)
        log.info(
            "partitions assigned",
            extra={
                "partitions": ",".join(f"{t}:{p}" for t, p in self.assignment),
                "resumed": ",".join(f"{t}:{p}@{start[(t, p)]}" for t, p in tps if (t, p) in start),
                "from_log_start": ",".join(from_beginning),
            },
        )
        self.rebalancing = False
        self.on_assign(self.assignment)

    def _resolve_start(self, topics: Sequence[str], name: str) -> dict[TP, int]:
        """Offsets for ``source.start_from`` (latest or a time), resolved once at start,
        before joining the group (a long scan must not hold up a rebalance)."""
        where = self.start.position
        if where in ("committed", "earliest"):
            return {}
        if self.restored():
            log.info(
                "a checkpoint was restored: its offsets win over source.start_from (run "
                "--ignore-checkpoint-offsets to start from it anyway)",
                extra={"pipeline": name, "start_from": self.start.start_from},
            )
            return {}  # partitions the checkpoint does not hold: resolved on assignment
        start_at = resolve(self.settings, [], where, self.security, topics)
        log.info(
            "start position",
            extra={"pipeline": name, "start_from": self.start.start_from,
                   "offsets": ",".join(f"{t}:{p}@{o}" for (t, p), o in sorted(start_at.items()))},
        )  # fmt: skip
        return start_at

    def _start_position(self, tp: TP) -> int | None:
        """Where a partition the model holds no offset for starts, by
        ``source.start_from``: an offset, BEGINNING, or None for the group's committed
        offset (or the log's beginning when a checkpoint was restored)."""
        where = self.start.position
        if where == "committed":
            return None
        if where == "earliest":
            return BEGINNING
        if tp not in self.start_at:  # a partition that appeared after the start
            self.start_at.update(resolve(self.settings, [tp], where, self.security))
        return self.start_at[tp]

    def _revoked(self, tps: list[TP]) -> None:
        self.rebalancing = True
        if tps:
            self.on_revoke(tps)
        if self.fetcher is not None:
            self.fetcher.revoke()  # nothing fetched for these under the old assignment counts
        self.assignment = [tp for tp in self.assignment if tp not in set(tps)]

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        """The records fetched within ``timeout_s``; BrokerError when the broker fails."""
        try:
            batches = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        except KafkaError as err:
            raise BrokerError(f"poll from {self.settings.bootstrap_servers}: {err!r}") from err
        out: list[Record] = []
        for tp, recs in batches.items():
            out.extend(
                Record(tp.topic, tp.partition, r.offset, r.timestamp, r.key, r.value) for r in recs
            )
        return out

    def commit(self, offsets: Mapping[TP, int], timeout_ms: int | None = None) -> None:
        """Commit next-offsets for partitions we still own; raises BrokerError on failure."""
        owned = set(self.assignment)
        payload = {
            TopicPartition(t, p): offset_and_metadata(o)
            for (t, p), o in offsets.items()
            if (t, p) in owned
        }
        if not payload:
            return
        if self.in_rebalance:
            # A blocking commit cannot run on the IO thread that calls the rebalance
            # listener (kafka-python raises). Nothing is lost: the checkpoint just written
            # holds these offsets, and whoever owns the partition next resumes from it.
            log.debug("offset commit skipped during a rebalance (the checkpoint holds them)")
            return
        try:
            self.consumer.commit(payload, timeout_ms=timeout_ms)
        except KafkaError as err:
            raise BrokerError(f"commit to {self.settings.bootstrap_servers}: {err!r}") from err

    def watermarks(self) -> dict[TP, tuple[int, int]]:
        """(position, high watermark) per owned partition where both are known.

        The high watermark comes from fetch responses (``highwater()``); some brokers
        answer ``end_offsets`` wrongly (the local Tansu broker does). A partition whose
        position the broker cannot give now is left out, not an error.
        """
        out: dict[TP, tuple[int, int]] = {}
        for t, p in self.assignment:
            tp = TopicPartition(t, p)
            hw = self.consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = self.consumer.position(tp, timeout_ms=0)
            except (KafkaError, TypeError):
                continue
            if pos is not None:
                out[(t, p)] = (pos, hw)
        if self.catch_up is not None:
            self.catch_up.observe(out, time.monotonic(), expected=len(self.assignment))
        return out

    def rewind(self, tp: TP) -> None:
        """Read ``tp`` again from the start of its (new) log."""
        self.consumer.seek_to_beginning(TopicPartition(*tp))

    def close(self) -> None:
        try:
            self.consumer.close(autocommit=False)
        except Exception as err:  # closing must not mask the real shutdown path
            log.debug("consumer close failed", extra={"error": repr(err)})
