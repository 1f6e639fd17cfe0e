"""Wires one pipeline: source -> decode -> featurize -> batch -> learn -> drift -> sinks.

The loop is single-threaded per pipeline. Offsets: ``next_offsets`` always describes
the model state in memory (an offset advances when its event is trained, seeded or
rejected). A checkpoint is taken only with the batcher empty, so the saved model,
featurizer and offsets agree; Kafka offsets are committed only after that file is
durable and the dead letters / outputs for those offsets are flushed.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_trainer import domains
from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.config import PipelineSettings, Settings
from stream_trainer.distributed import fingerprint
from stream_trainer.drift import AdaptationPolicy, DriftMonitor, InputDriftMonitor
from stream_trainer.errors import BrokerError, ConfigError, StreamTrainerError
from stream_trainer.events import Rejected, decoder_for, reasons
from stream_trainer.events.dedup import Deduper
from stream_trainer.learner import Learner
from stream_trainer.learner.keyed import KeyedLearner
from stream_trainer.learner.quality import Quality, profile_for
from stream_trainer.learner.replay import ReplayBuffer
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.pipeline.batcher import MicroBatcher
from stream_trainer.pipeline.hooks import NullHooks, PipelineHooks
from stream_trainer.pipeline.ledger import OffsetLedger
from stream_trainer.pipeline.outputs import prediction_records, raw_units
from stream_trainer.pipeline.ports import TP, Record, Sink, Source

log = logging.getLogger(__name__)

CHECKPOINT_FLUSH_TIMEOUT_S = 5.0
COMMIT_TIMEOUT_MS = 5000
SMOOTHING_EVENTS = 1000.0


@dataclass(slots=True)
class Item:
    record: Record
    event: dict[str, Any]


def output_topic(p: PipelineSettings) -> str | None:
    if p.output_topic:
        return p.output_topic
    return domains.get(p.kind).default_output_topic(p.topics)


def shard_root(settings: Settings, spec: PipelineSettings) -> Path:
    """Where a ``by_key`` pipeline's shards keep their checkpoints (one folder each)."""
    return settings.checkpoint.dir / spec.name / "shards"


class Poller:
    """``source.poll`` that, while the broker fails, logs and backs off (0.1 s doubling
    to 5 s) and returns nothing, so the loop around it carries on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backoff = 0.0

    def __call__(self, source: Source, stop: threading.Event, timeout_s: float) -> list[Record]:
        try:
            records = source.poll(timeout_s)
        except BrokerError as err:
            self.backoff = min(5.0, max(0.1, self.backoff * 2))
            log.warning(
                "poll failed; retrying",
                extra={"pipeline": self.name, "error": repr(err)[:200], "retry_in_s": self.backoff},
            )
            stop.wait(self.backoff)
            return []
        self.backoff = 0.0
        return records


def report_lag(source: Source, hooks: PipelineHooks, name: str) -> None:
    """Consumer lag per owned partition; a partition whose log ends before our position
    was replaced (a broker that lost its data): read its new log."""
    for (t, p), (pos, hw) in source.watermarks().items():
        hooks.on_lag(t, p, max(0, hw - pos))
        if pos > hw:
            log.warning(
                "partition log ends before our position; reading its new log",
                extra={"pipeline": name, "partition": f"{t}:{p}"},
            )
            source.rewind((t, p))


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        spec: PipelineSettings,
        *,
        device: torch.device | str = "cpu",
        hooks: PipelineHooks | None = None,
        clock: Any = time.monotonic,
        replicated: bool = False,
        shard: TP | None = None,
    ) -> None:
        """``replicated``: one of several processes under torchrun sharing this model
        (then ``attach`` its :class:`~stream_trainer.distributed.Replicas`). ``shard``:
        this pipeline is one partition's shard of a ``by_key`` pipeline (see keyed.py)."""
        self.settings, self.spec = settings, spec
        self.name = spec.name
        self.hooks = hooks or NullHooks()
        self.clock = clock
        feat_spec = spec.featurizer
        self.featurizer = build_featurizer(spec.kind, feat_spec)
        channels = domains.get(spec.kind).decoder_channels(self.featurizer)
        self.decode = decoder_for(spec.kind, channels=channels, max_bytes=spec.max_event_bytes)
        torch.manual_seed(settings.seed)
        o = spec.optimizer
        graphs = settings.cuda_graphs and torch.device(device).type == "cuda"
        self.replicated = replicated
        self.replicas: Any = None
        if replicated:
            # (embeddings keep their layout and optimizer, so that checkpoints move
            # between one process and replicas; allreduce densifies their gradients)
            if "challenger" in spec.drift.actions or spec.replay.capacity:
                raise ConfigError(
                    f"pipeline {spec.name}: with replicas (torchrun), the drift action "
                    "'challenger' and the replay buffer are not supported yet; set "
                    "drift.actions to reset_model, reset_optimizer and/or boost_lr, "
                    "and replay.capacity to 0"
                )
        keyed = spec.partitioning == "by_key"
        if keyed and ("challenger" in spec.drift.actions or spec.replay.capacity):
            raise ConfigError(
                f"pipeline {spec.name}: with partitioning by_key, the drift action "
                "'challenger' and the replay buffer are not available; set drift.actions "
                "to reset_model, reset_optimizer and/or boost_lr, and replay.capacity to 0"
            )

        def make_learner() -> Learner:
            return Learner(
                build_model(spec.kind, spec.model, self.featurizer),
                self.featurizer.task,
                optimizer=o.name,
                lr=o.lr,
                weight_decay=o.weight_decay,
                grad_clip_norm=o.grad_clip_norm,
                device=device,
                sparse_embeddings=o.sparse_embeddings,
                embedding_optimizer=o.embedding_optimizer,
                embedding_lr=o.embedding_lr,
                fixed_batch=spec.batch.max_size if graphs else None,
                cuda_graphs=graphs,
                bf16=settings.bf16,
            )

        root, name = settings.checkpoint.dir, spec.name
        if shard is not None:
            root, name = shard_root(settings, spec), f"{shard[0]}-{shard[1]}"
        self.store = CheckpointStore(root, name, settings.checkpoint.keep)
        try:
            self.learner: Any = (
                KeyedLearner(make_learner, self.store.dir / "models", spec.max_models,
                             lr=o.lr, keep=settings.checkpoint.keep)
                if keyed
                else make_learner()
            )  # fmt: skip
        except ValueError as err:
            raise ConfigError(f"pipeline {spec.name}: {err}") from None
        self.keyed = keyed
        d = spec.drift
        signal = {"block": d.block, "warmup": d.warmup_blocks, "half_life": d.reference_half_life}
        try:
            self.monitor = (
                DriftMonitor(d.detector, d.params, **signal) if d.detector != "none" else None
            )
        except ValueError as err:
            raise ConfigError(f"pipeline {spec.name}: drift: {err}") from None
        self.input_monitor = InputDriftMonitor(**signal) if d.input else None
        try:
            self.policy = AdaptationPolicy(
                d.actions,
                d.boost_factor,
                d.boost_updates,
                spawn=lambda: self.learner.spawn(),
                challenger={
                    "window": d.challenger_window,
                    "margin": d.challenger_margin,
                    "patience": d.challenger_patience,
                },
            )
        except ValueError as err:
            raise ConfigError(f"pipeline {spec.name}: drift: {err}") from None
        self.batcher: MicroBatcher[Item] = MicroBatcher(
            spec.batch.max_size, spec.batch.max_latency_ms / 1000, clock
        )
        self.output = output_topic(spec)
        self.quality = Quality(profile_for(spec.kind, self.featurizer.task))
        r = spec.replay
        self.replay = ReplayBuffer(r.capacity, r.fraction, settings.seed) if r.capacity else None
        self.next_offsets: dict[TP, int] = {}  # next offset to read, per the model state
        self.polled_next: dict[TP, int] = {}  # next offset we expect from the consumer
        self.ledger = OffsetLedger()
        # replicas: the ranges this process applied since the last checkpoint's merge
        self.fresh_ledger = OffsetLedger()
        self.base_ledger = OffsetLedger()
        self.drift_pending = False  # replicas: a detection to act on in the next round
        self.regroup = False  # replicas: another one left; exit for torchrun to regroup
        self.dedup = Deduper(spec.dedup_window)
        self.counters = {
            "consumed": 0,
            "trained": 0,
            "seeded": 0,
            "rejected": 0,
            "skipped": 0,  # updates refused by a guard (applied ones: learner.updates)
            "offset_resets": 0,
        }
        self.smoothed_loss = math.nan
        self.last_batch_loss = math.nan
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.last_checkpoint = clock()
        self.dirty = False  # state changed since the last checkpoint
        self.failed: str | None = None
        self.restored = False  # a checkpoint was loaded: its offsets are the truth

    # ---- state -------------------------------------------------------------------------
    def restore(self) -> bool:
        """Load the newest readable checkpoint; True when one was found."""
        doc = self.store.load_latest()
        if doc is None:
            return False
        try:
            self.learner.load_state_dict(doc["learner"])
            if self.replay is not None and doc["learner"].get("replay"):
                self.replay.load_state_dict(doc["learner"]["replay"])
            self.featurizer.load_state_dict(doc["featurizer"])
            if self.monitor is not None and doc["drift"].get("detector"):
                self.monitor.load_state_dict(doc["drift"])
            if self.input_monitor is not None and doc["drift"].get("input"):
                self.input_monitor.load_state_dict(doc["drift"]["input"])
            self.policy.load_state_dict(doc["policy"])
            if doc["ledger"]:
                self.ledger.load_state_dict(doc["ledger"])
                self.base_ledger.load_state_dict(doc["ledger"])
            if doc["dedup"]:
                self.dedup.load_state_dict(doc["dedup"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise StreamTrainerError(
                f"pipeline {self.name}: checkpoint in {self.store.dir} does not match the "
                f"config ({str(err)[:300]}); restore the old config, or move the "
                "checkpoint directory away to start fresh"
            ) from None
        self.next_offsets = {_parse_tp(k): int(v) for k, v in doc["offsets"].items()}
        self.restored = True
        self.counters.update({k: int(v) for k, v in doc["counters"].items() if k in self.counters})
        self.smoothed_loss = float(doc["counters"].get("smoothed_loss", math.nan))
        log.info(
            "resumed from checkpoint",
            extra={
                "pipeline": self.name,
                "offsets": _fmt_offsets(self.next_offsets),
                "trained": self.counters["trained"],
                "model_version": self.learner.updates,
            },
        )
        return True

    def state(self) -> dict[str, Any]:
        return {
            "learner": {
                **self.learner.state_dict(),
                "replay": self.replay.state_dict() if self.replay is not None else {},
            },
            "featurizer": self.featurizer.state_dict(),
            "drift": {
                **(self.monitor.state_dict() if self.monitor is not None else {}),
                "input": self.input_monitor.state_dict() if self.input_monitor else {},
            },
            "policy": self.policy.state_dict(),
            "offsets": {f"{t}:{p}": o for (t, p), o in sorted(self.next_offsets.items())},
            "ledger": self.ledger.state_dict(),
            "dedup": self.dedup.state_dict(),
            "counters": {**self.counters, "smoothed_loss": self.smoothed_loss},
        }

    # ---- processing --------------------------------------------------------------------
    def handle(self, records: list[Record]) -> None:
        """Decode polled records: rejects go to the dead-letter topic, the rest to the batcher."""
        if not records:
            return
        self.counters["consumed"] += len(records)
        self.hooks.on_consumed(len(records))
        decode, seen, polled_next = self.decode, self.dedup.seen, self.polled_next
        accepted: list[Item] = []
        for rec in records:
            tp = (rec.topic, rec.partition)
            expected = polled_next.get(tp)
            if expected is not None and rec.offset < expected:
                self._batch_add(accepted)
                accepted = []
                self._offset_reset(tp, expected, rec.offset)
            polled_next[tp] = rec.offset + 1
            result = decode(rec.value)
            if type(result) is dict and not seen(rec.value):
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
        self._advance(rec)
        if self.sink is None:
            return
        try:
            self.sink.dead_letter(self.spec.dlq_topic, rec, why)
        except BrokerError as err:  # e.g. larger than the broker takes: counted, logged, skipped
            log.warning(
                "dead letter not delivered",
                extra={"pipeline": self.name, "offset": rec.offset, "error": repr(err)[:200]},
            )

    def _offset_reset(self, tp: TP, expected: int, got: int) -> None:
        """The log went back: the broker lost data (a restart of an in-memory broker, a
        deleted and recreated topic). Learn what we hold, then follow the new log.
        (Replicas train only in rounds: the old log's pending events are dropped.)"""
        if self.replicas is None:
            self.flush()
        else:
            self.batcher.discard(lambda it: (it.record.topic, it.record.partition) == tp)
        self.next_offsets[tp] = got
        self.ledger.reset(tp)
        self.counters["offset_resets"] += 1
        self.hooks.on_offset_reset(*tp)
        log.warning(
            "offset reset: the partition's log went back (did the broker lose its data, or "
            "was the topic recreated?); continuing from the new log, nothing learned is lost",
            extra={
                "pipeline": self.name,
                "partition": f"{tp[0]}:{tp[1]}",
                "expected": expected,
                "got": got,
            },
        )

    def _advance(self, rec: Record) -> None:
        self._advance_range((rec.topic, rec.partition), rec.offset, rec.offset + 1)

    def _advance_many(self, records: list[Record]) -> None:
        """``_advance`` for many records: one ledger range per run of consecutive offsets."""
        run_tp, start, end = None, 0, 0
        for rec in records:
            tp = (rec.topic, rec.partition)
            if tp == run_tp and rec.offset == end:
                end += 1
                continue
            if run_tp is not None:
                self._advance_range(run_tp, start, end)
            run_tp, start, end = tp, rec.offset, rec.offset + 1
        if run_tp is not None:
            self._advance_range(run_tp, start, end)

    def _advance_range(self, tp: TP, start: int, end: int) -> None:
        if end > self.next_offsets.get(tp, 0):
            self.next_offsets[tp] = end
        self.ledger.add_range(tp, start, end)
        if self.replicated:
            self.fresh_ledger.add_range(tp, start, end)
        self.dirty = True

    def pump(self) -> int:
        """Train every batch that is due; return how many batches ran."""
        n = 0
        while self.batcher.ready():
            self.train(self.batcher.take())
            n += 1
        return n

    def flush(self) -> None:
        while len(self.batcher):
            self.train(self.batcher.take())

    def train(self, items: list[Item], reduce: Any = None) -> None:
        """Featurize and learn from ``items``. ``reduce``: replicas in ``allreduce`` mode
        (every replica calls this in the same round, with or without items)."""
        if not items:
            if reduce is not None:
                self.learner.idle_step(reduce)
            return
        events = [it.event for it in items]
        try:
            fb = self.featurizer.featurize(events)
        except Exception as err:  # user featurizers may fail on odd events: never fatal
            log.warning(
                "featurizer failed; batch sent to dead letters",
                extra={"pipeline": self.name, "error": repr(err)[:200]},
            )
            for it in items:
                self._reject(it.record, Rejected(reasons.FEATURIZER_ERROR, repr(err)[:200]))
            if reduce is not None:
                self.learner.idle_step(reduce)
            return
        n = len(fb)
        seeded = len(items) - n
        if seeded:
            self.counters["seeded"] += seeded
            self.hooks.on_seeded(seeded)
        self._advance_many([it.record for it in items])
        if n == 0:
            if reduce is not None:
                self.learner.idle_step(reduce)
            return
        t0 = time.perf_counter()
        replayed = self.replay.sample(n) if self.replay is not None else None
        if self.keyed:
            res = self.learner.step(fb.inputs, fb.targets, keys=fb.keys)
        else:
            res = self.learner.step(fb.inputs, fb.targets, replayed, reduce=reduce)
        dt = time.perf_counter() - t0
        self.counters["trained"] += n
        annotate = getattr(self.featurizer, "annotate", None)
        extra = annotate(res.outputs, fb.targets) if annotate is not None else {}
        if res.skipped:
            self.counters["skipped"] += 1
            log.warning("update skipped", extra={"pipeline": self.name, "reason": res.skipped})
        else:
            self._learned(fb, res, extra)
        now_ms = time.time() * 1000.0
        ages = [max(0.0, (now_ms - items[j].record.timestamp_ms) / 1000.0) for j in fb.index]
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
        if self.output is not None and self.sink is not None:
            self._emit(items, fb, res.outputs, res.losses, extra)

    def _learned(self, fb: Any, res: Any, extra: Mapping[str, np.ndarray]) -> None:
        """After an applied update: smoothed loss, quality, the drift monitor and the
        policy, the replay buffer, a running challenger."""
        batch_loss = self.last_batch_loss = res.mean_loss
        a = 1.0 - (1.0 - 1.0 / SMOOTHING_EVENTS) ** len(fb)
        self.smoothed_loss = (
            batch_loss
            if math.isnan(self.smoothed_loss)
            else self.smoothed_loss + a * (batch_loss - self.smoothed_loss)
        )
        pred, target = raw_units(fb, res.outputs)
        self.quality.update(pred, target, res.losses, extra.get("anomaly"))
        self.policy.after_update(self.learner)
        if self.monitor is not None and self.monitor.update(res.losses):
            if self.replicated:  # every replica acts on it, in the next round
                self.drift_pending = True
            else:
                self.policy.on_drift(self.learner)
            self.hooks.on_drift(self.monitor.detector_name, time.time())
            log.info(
                "drift detected",
                extra={
                    "pipeline": self.name,
                    "detector": self.monitor.detector_name,
                    "loss": round(batch_loss, 5),
                    "actions": ",".join(self.policy.actions),
                },
            )
        if self.input_monitor is not None and self.input_monitor.update(fb.inputs):
            self.hooks.on_input_drift(time.time())
            log.info("input drift detected", extra={"pipeline": self.name})
        if self.replay is not None:
            self.replay.add(fb.inputs, fb.targets)
        self._compete(fb, res.losses)

    def _compete(self, fb: Any, losses: np.ndarray) -> None:
        """A running challenger learns from the same batch; promote or drop it."""
        outcome = self.policy.compete(fb.inputs, fb.targets, losses)
        if outcome is None:
            return
        verdict, winner = outcome
        if winner is not None:
            winner.updates = self.learner.updates  # the model version keeps counting up
            self.learner = winner
        self.hooks.on_challenger(verdict)
        log.info(
            f"challenger {verdict}",
            extra={"pipeline": self.name, "model_version": self.learner.updates},
        )

    def _emit(
        self,
        items: list[Item],
        fb: Any,
        outputs: np.ndarray,
        losses: np.ndarray,
        extra: Mapping[str, np.ndarray],
    ) -> None:
        records = prediction_records(
            [it.record for it in items],
            [it.event for it in items],
            fb,
            outputs,
            losses,
            extra,
            self.learner.updates,
        )
        anomalies = sum(1 for _, doc in records if doc.get("anomaly"))
        if anomalies:
            self.hooks.on_anomalies(anomalies)
        for key, doc in records:
            self.sink.output(self.output, key, doc)

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoint(self, *, commit: bool = True) -> bool:
        """Flush pending events, write a durable checkpoint, then commit its offsets.

        Returns False when the checkpoint had to be postponed: the dead letters and
        outputs of these offsets could not be delivered (broker unreachable), or the
        file could not be written. Training goes on; the next attempt comes after
        ``checkpoint.every_seconds``, and a crash meanwhile only replays more.
        """
        self.flush()
        if not self.dirty:
            return True
        t0 = time.perf_counter()
        try:
            if self.sink is not None:
                self.sink.flush(timeout_s=CHECKPOINT_FLUSH_TIMEOUT_S)
            path = self.store.save(self.state())
            if self.keyed:
                self.learner.saved()
        except StreamTrainerError as err:
            self.last_checkpoint = self.clock()
            self.hooks.on_checkpoint_failed()
            log.warning("checkpoint postponed", extra={"pipeline": self.name, "error": str(err)})
            return False
        dt = time.perf_counter() - t0
        self.dirty = False
        self.last_checkpoint = self.clock()
        self.hooks.on_checkpoint(dt, time.time())
        log.debug(
            "checkpoint written",
            extra={"pipeline": self.name, "path": str(path), "seconds": round(dt, 4)},
        )
        if commit and self.source is not None:
            try:
                self.source.commit(self.next_offsets, timeout_ms=COMMIT_TIMEOUT_MS)
            except BrokerError as err:  # the checkpoint holds the offsets; commit is advisory
                log.warning(
                    "offset commit failed (the checkpoint still holds the offsets)",
                    extra={"pipeline": self.name, "error": repr(err)[:200]},
                )
        return True

    def on_revoke(self, tps: list[TP]) -> None:
        """Before partitions go to another member, persist what we learned from them.

        Replicas share one model: what this process learned from them is already in
        every replica's weights and in the offsets of the last round, where the next
        owner resumes; it drops their events it has not trained yet (a checkpoint here
        would be a collective inside the consumer's poll, out of step with the others).
        """
        if self.replicas is None:
            self.checkpoint()
            return
        lost = set(tps)
        dropped = self.batcher.discard(lambda it: (it.record.topic, it.record.partition) in lost)
        log.info(
            "partitions revoked",
            extra={
                "pipeline": self.name,
                "partitions": ",".join(f"{t}:{p}" for t, p in tps),
                "untrained_dropped": dropped,
            },
        )

    # ---- the loop ----------------------------------------------------------------------
    def ready(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"{self.name}: failed: {self.failed}"
        if self.source is None or not self.source.assignment:
            return False, f"{self.name}: no partitions assigned yet"
        return True, ""

    def run(
        self, source: Source, sink: Sink | None, stop: threading.Event, *, idle_poll_s: float = 0.01
    ) -> None:
        self.source, self.sink = source, sink
        every = self.settings.checkpoint.every_seconds
        last_lag = 0.0
        poll = Poller(self.name)
        while not stop.is_set():
            self.handle(poll(source, stop, self._poll_timeout(idle_poll_s)))
            self.pump()
            now = self.clock()
            if now - last_lag >= 1.0:
                last_lag = now
                self.hooks.on_quality(self.quality.values())
                report_lag(source, self.hooks, self.name)
            if now - self.last_checkpoint >= every:
                self.checkpoint()
        self.checkpoint()

    def _poll_timeout(self, idle_s: float) -> float:
        """Poll no longer than until the oldest pending event's batch is due."""
        left = self.batcher.time_left()
        return idle_s if left is None else min(idle_s, left)

    # ---- replicas (torchrun) -----------------------------------------------------------
    def attach(self, replicas: Any) -> None:
        """Join the replicas: start from rank 0's weights (equal anyway after a restore
        from the shared checkpoint; a fresh model is seeded the same, but make sure)."""
        self.replicas = replicas
        replicas.broadcast_tensors(self.learner.sync_tensors(with_optimizer=False))

    def _round(self, **flags: Any) -> list[dict[str, Any]]:
        """One round: every replica's flags and next offsets; the offsets of the model
        (the highest any replica reached, per partition) become ours, so a partition
        that moves here resumes where the shared model left it."""
        views = self.replicas.exchange({**flags, "offsets": self.next_offsets})
        for view in views:
            for tp, o in view["offsets"].items():
                if o > self.next_offsets.get(tp, -1):
                    self.next_offsets[tp] = o
        return views

    def _check(self, views: list[dict[str, Any]]) -> None:
        prints = [v.get("fp") for v in views]
        if prints[0] is None:
            return
        same = all(p == prints[0] for p in prints)
        self.hooks.on_sync_check(same)
        if not same:
            log.error(
                "replicas' weights differ",
                extra={"pipeline": self.name, "fingerprints": ";".join(map(str, prints))},
            )

    def _average(self) -> None:
        sig = self.learner.optimizer_signature()
        views = self.replicas.exchange(sig)
        with_opt = all(tuple(v) == tuple(sig) for v in views)
        self.replicas.average(self.learner.sync_tensors(with_optimizer=with_opt))
        if self.spec.sync.check_every:
            self._check(
                self.replicas.exchange({"fp": fingerprint(self.learner.sync_tensors(False))})
            )

    def run_replicated(
        self, source: Source, sink: Sink | None, stop: threading.Event, *, idle_poll_s: float = 0.01
    ) -> None:
        """The loop of one replica: poll, then one round with the others."""
        rep = self.replicas
        self.source, self.sink = source, sink
        sync = self.spec.sync
        every = self.settings.checkpoint.every_seconds
        allreduce = sync.mode == "allreduce"
        rounds, local_steps, last_avg, last_lag = 0, 0, self.clock(), 0.0
        poll = Poller(self.name)
        while True:
            self.handle(poll(source, stop, self._poll_timeout(idle_poll_s)))
            batch = None
            if allreduce:
                batch = self.batcher.take() if self.batcher.ready() else None
            else:
                local_steps += self.pump()
            now = self.clock()
            rounds += 1
            check = sync.check_every and rounds % sync.check_every == 0
            views = self._round(
                batch=batch is not None,
                stop=stop.is_set(),
                checkpoint=rep.rank == 0 and now - self.last_checkpoint >= every,
                drift=self.drift_pending,
                average=not allreduce
                and (local_steps >= sync.every_steps or (now - last_avg) * 1000 >= sync.every_ms),
                # allreduce: the weights are equal after every round; average: only right
                # after an averaging (checked there)
                fp=fingerprint(self.learner.sync_tensors(False)) if check and allreduce else None,
            )
            self._check(views)
            if any(v["batch"] for v in views):
                self.train(batch or [], reduce=rep.reduce_grads)
            if any(v["drift"] for v in views):
                self.drift_pending = False
                self.policy.on_drift(self.learner)
            if any(v["average"] for v in views):
                self._average()
                local_steps, last_avg = 0, self.clock()
            stopping = any(v["stop"] for v in views)
            if stopping or any(v["checkpoint"] for v in views):
                self.checkpoint_replicated()
            if stopping:
                # a replica asked to stop leaves after this checkpoint; the others exit
                # too, for torchrun to restart them in a group of those that remain
                self.regroup = not stop.is_set()
                return
            if now - last_lag >= 1.0:
                last_lag = now
                self.hooks.on_quality(self.quality.values())
                report_lag(source, self.hooks, self.name)

    def checkpoint_replicated(self) -> bool:
        """A checkpoint of the shared model, as a round: every replica trains what it
        holds (``allreduce``: in lockstep) or averages (``average``); rank 0 writes the
        weights with every partition's next offset and the union of all replicas'
        ledgers; then each replica commits the offsets of its own partitions."""
        rep = self.replicas
        if self.spec.sync.mode == "allreduce":
            while True:
                batch = self.batcher.take() if len(self.batcher) else None
                views = self._round(batch=batch is not None)
                if not any(v["batch"] for v in views):
                    break
                self.train(batch or [], reduce=rep.reduce_grads)
        else:
            self.flush()
            self._average()
        t0 = time.perf_counter()
        views = self._round(fresh=self.fresh_ledger.state_dict(), dirty=self.dirty)
        ok = True
        if rep.rank == 0 and any(v["dirty"] for v in views):
            merged = OffsetLedger()
            merged.load_state_dict(self.base_ledger.state_dict())
            for v in views:
                fresh = OffsetLedger()
                fresh.load_state_dict(v["fresh"])
                merged.merge(fresh)
            self.ledger = merged
            try:
                if self.sink is not None:
                    self.sink.flush(timeout_s=CHECKPOINT_FLUSH_TIMEOUT_S)
                self.store.save(self.state())
            except StreamTrainerError as err:
                ok = False
                self.hooks.on_checkpoint_failed()
                log.warning(
                    "checkpoint postponed", extra={"pipeline": self.name, "error": str(err)}
                )
        elif rep.rank != 0 and self.sink is not None:
            self.sink.flush(timeout_s=CHECKPOINT_FLUSH_TIMEOUT_S)
        ok, ledger = rep.broadcast((ok, self.ledger.state_dict() if rep.rank == 0 else None))
        self.last_checkpoint = self.clock()
        if not ok:
            return False
        self.ledger.load_state_dict(ledger)
        self.base_ledger.load_state_dict(ledger)
        self.fresh_ledger = OffsetLedger()
        self.dirty = False
        self.hooks.on_checkpoint(time.perf_counter() - t0, time.time())
        if self.source is not None:
            try:
                self.source.commit(self.next_offsets, timeout_ms=COMMIT_TIMEOUT_MS)
            except BrokerError as err:
                log.warning(
                    "offset commit failed (the checkpoint still holds the offsets)",
                    extra={"pipeline": self.name, "error": repr(err)[:200]},
                )
        return True

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

    def resume_offsets(self, assigned: Sequence[TP] = ()) -> dict[TP, int]:
        """Where each partition resumes on assignment (``assigned``: the new assignment):
        the model state's next offsets."""
        self.polled_next = dict(self.next_offsets)
        return dict(self.next_offsets)


def _parse_tp(key: str) -> TP:
    topic, _, part = key.rpartition(":")
    return topic, int(part)


def _fmt_offsets(offsets: Mapping[TP, int]) -> str:
    return ",".join(f"{t}:{p}@{o}" for (t, p), o in sorted(offsets.items())) or "-"
