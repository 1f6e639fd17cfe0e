"""One pipeline in one process, and its per-batch step:
records -> decode + validate -> dedup -> micro-batch -> featurize -> learn (test, then
train) -> after-update work (smoothing, quality, drift, policy, replay, challenger) ->
outputs.

Offsets: :class:`~stream_trainer.pipeline.offsets.Offsets` always describes the model
state in memory. A checkpoint is taken only with the batcher empty, so the saved model,
featurizer and offsets agree; offsets are committed only after that file is durable
and the dead letters / outputs for those offsets are flushed (``commit.py``); when and
how a pipeline checkpoints: ``checkpointing.py``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np
import torch

from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.config import Settings
from stream_trainer.errors import BrokerError
from stream_trainer.events import Rejected, reasons
from stream_trainer.events.dedup import Deduper
from stream_trainer.features.base import Made, gather, is_stateless
from stream_trainer.learner.keyed import KeyedLearner
from stream_trainer.learner.quality import Quality, profile_for
from stream_trainer.learner.replay import ReplayBuffer
from stream_trainer.pipeline import build, state
from stream_trainer.pipeline.after import AfterUpdate
from stream_trainer.pipeline.batcher import Item, MicroBatcher
from stream_trainer.pipeline.checkpointing import Checkpointing
from stream_trainer.pipeline.hooks import NullHooks, PipelineHooks
from stream_trainer.pipeline.joiner import Joiner
from stream_trainer.pipeline.loop import IDLE_POLL_S, report_lag, run_loop
from stream_trainer.pipeline.offsets import Offsets
from stream_trainer.pipeline.outputs import prediction_records
from stream_trainer.pipeline.ports import TP, Record, Sink, Source
from stream_trainer.pipeline.rejects import HINTS, RejectWatch
from stream_trainer.pipeline.runner import ready
from stream_trainer.pipeline_config import PipelineSettings

log = logging.getLogger(__name__)

# caught up: the consumer lag is down to this many batches of batch.max_size
CAUGHT_UP_BATCHES = 4


class Pipeline(AfterUpdate, Checkpointing):
    """A :class:`~stream_trainer.pipeline.runner.Runner` for one process (also one
    partition's shard of a ``by_key`` pipeline, with ``shard``)."""

    replicated = False

    def __init__(
        self,
        settings: Settings,
        spec: PipelineSettings,
        *,
        device: torch.device | str = "cpu",
        hooks: PipelineHooks | None = None,
        clock: Callable[[], float] = time.monotonic,
        shard: TP | None = None,
    ) -> None:
        self.settings, self.spec, self.name = settings, spec, spec.name
        self.hooks: PipelineHooks = hooks or NullHooks()
        self.clock = clock
        # decoder_spec: for ingest workers, which build the same decoder in their process
        self.featurizer, self.decode, self.decoder_spec = build.featurizer_and_decoder(spec)
        torch.manual_seed(settings.seed)
        root, name = settings.checkpoint.dir, spec.name
        if shard is not None:
            root, name = build.shard_root(settings, spec), f"{shard[0]}-{shard[1]}"
        self.store = CheckpointStore(root, name, settings.checkpoint.keep)
        make = build.learner_factory(settings, spec, self.featurizer, device)
        self.learner: Any = build.learner(settings, spec, make, self.store.dir / "models")
        self.keyed = isinstance(self.learner, KeyedLearner)
        self.monitor, self.input_monitor = build.monitors(spec)
        self.policy = build.policy(spec, spawn=lambda: self.learner.spawn())
        b = spec.batch
        self.batcher: MicroBatcher[Item] = MicroBatcher(b.max_size, b.max_latency_ms / 1000, clock)
        self._last_lag: int | None = None  # the consumer lag a second ago (_fit_batches)
        self._growing = 0  # and for how many seconds in a row it has grown
        self.output = build.output_topic(spec)
        self.output_flag = build.output_flag(spec)  # e.g. "anomaly": only those records
        self.quality = Quality(profile_for(spec.kind, self.featurizer.task))
        r = spec.replay
        self.replay = (
            ReplayBuffer(r.capacity, r.fraction, settings.seed, r.max_rows) if r.capacity else None
        )
        self.offsets = Offsets(replicated=self.replicated)
        self.dedup = Deduper(spec.dedup_window)
        self.reject_watch = RejectWatch()
        self.counters = dict.fromkeys(
            ("consumed", "trained", "seeded", "rejected", "skipped", "offset_resets"), 0
        )  # skipped: updates refused by a guard (applied ones: learner.updates)
        self.smoothed_loss = self.last_batch_loss = math.nan
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.stop = threading.Event()  # the service's, once running
        self.last_checkpoint = clock()
        self._writing = None  # a periodic checkpoint being written (checkpointing.py)
        self.failed: str | None = None
        self.restored = False
        self.regroup = False
        self.publisher: Any = None  # serving's Publisher, when the service serves this pipeline
        # delayed labels: impressions wait in the joiner for their label (joiner.py)
        self.joiner = Joiner(spec.labels, spec.max_event_bytes) if spec.labels else None
        # what ingest workers featurize with (kind, featurizer settings): a stateless
        # featurizer, when the trainer needs only the examples (no joined labels, no
        # output records, no per-key models); None: the workers send events
        self.worker_featurizer: tuple[str, Any] | None = None
        if is_stateless(self.featurizer, spec.kind) and not (
            self.joiner or self.output or self.keyed
        ):
            self.worker_featurizer = (spec.kind, spec.featurizer)

    @property
    def next_offsets(self) -> dict[TP, int]:
        return self.offsets.next

    @property
    def polled_next(self) -> dict[TP, int]:
        return self.offsets.polled_next

    # ---- state -------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the newest readable checkpoint; True when one was found."""
        doc = self.store.load_latest()
        if doc is None:
            return False
        state.load(self, doc)
        self.restored = True
        return True

    def state(self) -> dict[str, Any]:
        return state.document(self)

    def forget_offsets(self) -> None:
        """``run --ignore-checkpoint-offsets``: keep the restored model, forget where it
        stopped in the log (partitions then start at ``source.start_from``), and its
        duplicate window (events read again are not a producer's repeats)."""
        self.offsets = Offsets(replicated=self.replicated)
        self.dedup = Deduper(self.spec.dedup_window)
        self.restored = False

    def resume_offsets(self, assigned: Sequence[TP] = ()) -> dict[TP, int]:
        return self.offsets.resume()

    # ---- the per-batch step ------------------------------------------------------------
    def handle(self, records: list[Record]) -> None:
        """Decode polled records: rejects go to the dead-letter topic, the rest to the batcher."""
        if not records:
            return
        self.counters["consumed"] += len(records)
        self.hooks.on_consumed(len(records))
        self.reject_watch.consumed(len(records))
        if self.joiner is not None:  # impressions and labels: the joiner applies offsets
            self.joiner.handle(self, records)
            return
        polled_next = self.offsets.polled_next
        seen: Callable[[Any, TP], bool]  # on a value's bytes, or on a worker's digest of them
        decoded = getattr(records, "decoded", None)  # an ingest worker decoded them
        if decoded is None:
            keys: Sequence[Any] = [r.value for r in records]
            seen, decoded = self.dedup.seen, self.decode(keys, [r.timestamp_ms for r in records])
        else:
            seen, keys = self.dedup.seen_digest, records.digests  # type: ignore[attr-defined]
        accepted: list[Item] = []
        for rec, result, key in zip(records, decoded, keys, strict=True):
            tp = (rec.topic, rec.partition)
            expected = polled_next.get(tp)
            if expected is not None and rec.offset < expected:
                self._batch_add(accepted)
                accepted = []
                self._log_went_back(tp, expected, rec.offset)
            polled_next[tp] = rec.offset + 1
            if (type(result) is dict or type(result) is tuple) and not seen(key, tp):
                accepted.append(Item(rec, result))
                continue
            if not isinstance(result, Rejected):
                result = Rejected(reasons.DUPLICATE, "same bytes as a recent event")
            self._reject(rec, result)
        self._batch_add(accepted)

    def _batch_add(self, items: list[Item]) -> None:
        if items:
            self.batcher.extend(items)

    def _reject(self, rec: Record, why: Rejected) -> None:
        self.counters["rejected"] += 1
        self.hooks.on_rejected(why.reason)
        self.reject_watch.rejected(why.reason)
        self.offsets.applied((rec.topic, rec.partition), rec.offset, rec.offset + 1)
        if self.sink is None:
            return
        try:
            self.sink.dead_letter(self.spec.dlq_topic, rec, why)
        except BrokerError as err:  # e.g. larger than the broker takes: counted, logged, skipped
            log.warning(
                "dead letter not delivered",
                extra={"pipeline": self.name, "offset": rec.offset, "error": repr(err)[:200]},
            )

    def _log_went_back(self, tp: TP, expected: int, got: int) -> None:
        """The log went back: the broker lost data (a restart of an in-memory broker, a
        deleted and recreated topic). Learn what we hold, then follow the new log."""
        self._drop_old_log(tp)
        self.offsets.went_back(tp, got)
        forgotten = self.dedup.forget(tp)  # the new log's events are new, whatever their bytes
        self.counters["offset_resets"] += 1
        self.hooks.on_offset_reset(*tp)
        log.warning(
            "offset reset: the partition's log went back (did the broker lose its data, or "
            "was the topic recreated?); continuing from the new log, nothing learned is lost",
            extra={"pipeline": self.name, "partition": f"{tp[0]}:{tp[1]}", "expected": expected,
                   "got": got, "duplicate_window_forgotten": forgotten},
        )  # fmt: skip

    def _drop_old_log(self, tp: TP) -> None:
        self.flush()

    def pump(self, caught_up: bool = False) -> int:
        """Train every batch that is due; return how many batches ran. ``caught_up``:
        the last poll emptied what the source held, so nothing is worth waiting for:
        train what is pending now (small batches when traffic is light, full ones
        under a backlog, whatever ``batch.max_latency_ms`` allows)."""
        n = 0
        while self.batcher.ready() or (caught_up and len(self.batcher)):
            self.train(self.batcher.take())
            n += 1
        return n

    def flush(self) -> None:
        while len(self.batcher):
            self.train(self.batcher.take())

    def train(self, items: list[Item], reduce: Any = None) -> None:
        """Featurize and learn from ``items``. ``reduce``: replicas in ``allreduce`` mode
        (every replica calls this in the same round, with or without items)."""
        fb = self._featurize(items) if items else None
        if fb is None or len(fb) == 0:
            if reduce is not None:
                self.learner.idle_step(reduce)
            return
        n = len(fb)
        t0 = time.perf_counter()
        replayed = self.replay.sample(n) if self.replay is not None else None
        if self.keyed:
            res = self.learner.step(fb.inputs, fb.targets, replayed, keys=fb.keys)
        else:
            res = self.learner.step(fb.inputs, fb.targets, replayed, reduce=reduce)
        dt = time.perf_counter() - t0
        if self.joiner is not None:  # scored with the predictions made at impression time
            self.joiner.rescore(items, fb, res)
        self.counters["trained"] += n
        annotate = getattr(self.featurizer, "annotate", None)
        extra = annotate(res.outputs, fb.targets) if annotate is not None else {}
        if res.skipped:
            self.counters["skipped"] += 1
            log.warning("update skipped", extra={"pipeline": self.name, "reason": res.skipped})
        else:
            self.learned(fb, res, extra)
            if self.publisher is not None:  # serving: a copy of the weights, now and then
                self.publisher.updated(self.learner)
        stamps = np.fromiter((items[j].record.timestamp_ms for j in fb.index.tolist()),
                             np.float64, n)  # fmt: skip
        ages = np.maximum(0.0, (time.time() * 1000.0 - stamps) / 1000.0)
        self.hooks.on_batch(
            trained=n,
            batch_loss=res.mean_loss,
            smoothed_loss=self.smoothed_loss,
            update_seconds=dt,
            event_ages=ages,
            lr=self.learner.lr,
            model_version=self.learner.updates,
            skipped=res.skipped,
            clipped=res.clipped,
        )
        flags = extra.get("anomaly")
        if flags is not None and (anomalies := int(np.count_nonzero(flags))):
            self.hooks.on_anomalies(anomalies)
        if self.output is not None and self.sink is not None:
            only = extra.get(self.output_flag) if self.output_flag else None
            # events, not examples: workers featurize only for pipelines without outputs
            events = cast(list[dict[str, Any]], [it.event for it in items])
            records = prediction_records(
                [it.record for it in items], events, fb,
                res.outputs, res.losses, extra, self.learner.updates, only,
            )  # fmt: skip
            for key, doc in records:
                self.sink.output(self.output, key, doc)

    def _featurize(self, items: list[Item]) -> Any:
        """The batch's features (None when the featurizer failed: dead letters, never
        fatal); the offsets of every item are applied (trained, or seeded state). Items an
        ingest worker featurized carry their examples: gathered, not made again."""
        if type(items[0].event) is tuple:  # (a pipeline's workers featurize all or none)
            fb = gather(cast(list[tuple[Made, int]], [it.event for it in items]))
            self.offsets.applied_records(it.record for it in items)
            return fb
        try:
            fb = self.featurizer.featurize([it.event for it in items])
        except Exception as err:  # user featurizers may fail on odd events
            log.warning(
                "featurizer failed; batch sent to dead letters",
                extra={"pipeline": self.name, "error": repr(err)[:200]},
            )
            for it in items:
                self._reject(it.record, Rejected(reasons.FEATURIZER_ERROR, repr(err)[:200]))
            return None
        seeded = len(items) - len(fb)
        if seeded:
            self.counters["seeded"] += seeded
            self.hooks.on_seeded(seeded)
        if self.joiner is None:  # (the joiner applied them when it consumed the records)
            self.offsets.applied_records(it.record for it in items)
        return fb

    # ---- rebalances; checkpoints: checkpointing.py -------------------------------------
    def on_assign(self, tps: list[TP]) -> None:
        self.hooks.on_partitions(tps)

    def on_revoke(self, tps: list[TP]) -> None:
        """Before partitions go to another member, persist what we learned from them."""
        self.checkpoint()

    # ---- the loop ----------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        return ready(self, self.source)

    def run(
        self,
        source: Source,
        sink: Sink | None,
        stop: threading.Event,
        *,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.source, self.sink, self.stop = source, sink, stop
        run_loop(self, source, stop, self.name, clock=self.clock, idle_poll_s=idle_poll_s)

    def poll_timeout(self, idle_s: float) -> float:
        """Poll no longer than until the oldest pending event's batch is due."""
        left = self.batcher.time_left()
        return idle_s if left is None else min(idle_s, left)

    def step(self, records: list[Record], stopping: bool) -> bool:
        if self._writing is not None:
            self.collect_checkpoint()
        if stopping:
            return False
        self.handle(records)
        self.pump(caught_up=len(records) < self.settings.kafka.max_poll_records)
        self.publish_pending()
        return True

    def publish_pending(self) -> None:
        """Serving: the updates the last steps left unpublished, once their period is up
        (a burst's last steps reach serving while the stream is quiet)."""
        if self.publisher is not None:
            self.publisher.catch_up(self.learner)

    def every_second(self, now: float) -> None:
        """Quality, lag, and a warning when most recent events were rejected."""
        self.hooks.on_quality(self.quality.values())
        if self.source is not None:
            self._fit_batches(report_lag(self.source, self.hooks, self.name))
        self.warn_rejects(now)

    def _fit_batches(self, lag: int) -> None:
        """The batch size for the next second, from the consumer lag (once a second):

        - behind by more than ``batch.backlog_lag`` events (a long backlog): the largest
          batches, ``batch.backlog_max_size``, until caught up (throughput);
        - falling behind (the lag grew two seconds in a row, past a few small
          batches; one jump is a burst): twice the size, up to ``backlog_max_size``,
          so that the step's fixed cost spreads over more events until training
          keeps up with the stream (its batches form as fast as events arrive);
        - caught up (the lag down to a few small batches): ``batch.max_size``, more
          updates per event. A short backlog that shrinks every second never grows
          the batches: on one, small batches learn more."""
        b = self.spec.batch
        grew = self._last_lag is not None and lag > self._last_lag
        self._growing = self._growing + 1 if grew else 0
        self._last_lag = lag
        if b.backlog_max_size <= b.max_size:
            return
        size = self.batcher.max_size
        if lag > b.backlog_lag:
            size = b.backlog_max_size
        elif lag <= CAUGHT_UP_BATCHES * b.max_size:
            size = b.max_size
        elif self._growing >= 2:
            size = min(2 * size, b.backlog_max_size)
        self.batcher.max_size = size

    def warn_rejects(self, now: float) -> None:
        warning = self.reject_watch.check(now)
        if warning is None:
            return
        share, reason, counts = warning
        log.warning(
            f"most recent events rejected ({share:.0%}, mostly {reason})",
            extra={
                "pipeline": self.name,
                "reasons": ",".join(f"{r}={n}" for r, n in sorted(counts.items())),
                "hint": HINTS.get(reason, f"see the dead-letter topic {self.spec.dlq_topic}"),
            },
        )

    def checkpoint_due(self, now: float) -> bool:
        return now - self.last_checkpoint >= self.settings.checkpoint.every_seconds

    def finish(self) -> bool:
        return self.checkpoint()

    def summary(self) -> dict[str, Any]:
        """Counters and losses for the history file."""
        return {
            **self.counters,
            "updates": self.learner.updates,
            "drifts": self.monitor.detections if self.monitor is not None else 0,
            "loss_batch": self.last_batch_loss,
            "loss_smoothed": self.smoothed_loss,
            **{f"quality_{k}": v for k, v in self.quality.values().items()},
        }
