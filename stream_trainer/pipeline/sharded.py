"""The loop of a ``partitioning: by_key`` pipeline: one shard per assigned partition.

Each shard is a :class:`~stream_trainer.pipeline.core.Pipeline` restricted to one partition,
with its own featurizer, per-key models (:class:`~stream_trainer.learner.keyed.KeyedLearner`),
offsets, ledger and checkpoint directory. On assignment a shard is restored from its
newest checkpoint (in the shared checkpoint directory, wherever it was written); on
revocation it is checkpointed and its offset committed before the partition leaves.
Replicas of a by_key pipeline need no sync: each key lives in exactly one shard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from stream_trainer.config import PipelineSettings, Settings
from stream_trainer.errors import BrokerError, StreamTrainerError
from stream_trainer.pipeline.core import (
    COMMIT_TIMEOUT_MS,
    Pipeline,
    Poller,
    output_topic,
    report_lag,
    shard_root,
)
from stream_trainer.pipeline.hooks import NullHooks, PipelineHooks
from stream_trainer.pipeline.ports import TP, Record, Sink, Source

log = logging.getLogger(__name__)


class ShardedPipeline:
    def __init__(
        self,
        settings: Settings,
        spec: PipelineSettings,
        *,
        device: torch.device | str = "cpu",
        hooks: PipelineHooks | None = None,
    ) -> None:
        self.settings, self.spec, self.device = settings, spec, device
        self.name = spec.name
        self.hooks = hooks or NullHooks()
        self.root = shard_root(settings, spec)
        self.shards: dict[TP, Pipeline] = {}
        self.output = output_topic(spec)
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.failed: str | None = None
        self.restored = False
        self.replicas = None  # the service's view of a pipeline: by_key needs no sync
        self.regroup = False
        check(spec)
        self._shard_for(("validate", 0))  # bad settings fail now, not at the first assignment

    def _shard_for(self, tp: TP) -> Pipeline:
        return Pipeline(self.settings, self.spec, device=self.device, hooks=self.hooks, shard=tp)

    # ---- what the service and the source call ------------------------------------------
    def restore(self) -> bool:
        """True when any shard has a checkpoint: a partition without one was never
        learned by this pipeline, and starts at its log's beginning."""
        self.restored = self.root.is_dir() and any(self.root.iterdir())
        return self.restored

    def resume_offsets(self, assigned: Sequence[TP] = ()) -> dict[TP, int]:
        """Restore the shards of newly ``assigned`` partitions from their newest
        checkpoints (in the shared directory, wherever they were written); where each
        held shard resumes."""
        for tp in assigned:
            if tp not in self.shards:
                shard = self._shard_for(tp)
                shard.restore()
                shard.sink = self.sink
                self.shards[tp] = shard
        out: dict[TP, int] = {}
        for shard in self.shards.values():
            out.update(shard.resume_offsets())
        return out

    def on_assign(self, tps: list[TP]) -> None:
        self.hooks.on_partitions(tps)
        log.info(
            "shards held",
            extra={"pipeline": self.name,
                   "shards": ",".join(f"{t}:{p}" for t, p in sorted(self.shards)),
                   "models": self.models()},
        )  # fmt: skip

    def on_revoke(self, tps: list[TP]) -> None:
        """Checkpoint the shards that leave and commit their offsets, then let them go."""
        leaving = {tp: self.shards.pop(tp) for tp in tps if tp in self.shards}
        self._checkpoint(leaving)

    def ready(self) -> tuple[bool, str]:
        if self.failed:
            return False, f"{self.name}: failed: {self.failed}"
        if self.source is None or not self.source.assignment:
            return False, f"{self.name}: no partitions assigned yet"
        return True, ""

    def summary(self) -> dict[str, Any]:
        total: dict[str, Any] = {"updates": 0}
        for shard in self.shards.values():
            for k, v in shard.counters.items():
                total[k] = total.get(k, 0) + v
            total["updates"] += shard.learner.updates
        return {**total, "shards": len(self.shards), "models": self.models()}

    def models(self) -> int:
        return sum(len(s.learner) for s in self.shards.values())

    # ---- the loop ----------------------------------------------------------------------
    def _checkpoint(self, shards: Mapping[TP, Pipeline]) -> None:
        offsets: dict[TP, int] = {}
        for tp, shard in shards.items():
            if shard.checkpoint(commit=False):
                if tp in shard.next_offsets:
                    offsets[tp] = shard.next_offsets[tp]
        if offsets and self.source is not None:
            try:
                self.source.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
            except BrokerError as err:
                log.warning(
                    "offset commit failed (the checkpoints still hold the offsets)",
                    extra={"pipeline": self.name, "error": repr(err)[:200]},
                )

    def _bound_memory(self) -> None:
        """At most ``max_models`` resident models in this process: evict saved ones,
        least recently used first; when too many learned since the last checkpoint,
        checkpoint first (then they are saved, and can go)."""
        limit = self.spec.max_models
        resident = sum(len(s.learner.resident) for s in self.shards.values())
        if resident <= limit:
            return
        for shard in self.shards.values():
            keep = max(1, limit * len(shard.learner.resident) // resident)
            shard.learner.evict(keep)
        if sum(len(s.learner.resident) for s in self.shards.values()) > limit:
            self._checkpoint(self.shards)
            for shard in self.shards.values():
                shard.learner.evict(max(1, limit // max(len(self.shards), 1)))

    def run(
        self, source: Source, sink: Sink | None, stop: threading.Event, *, idle_poll_s: float = 0.01
    ) -> None:
        self.source, self.sink = source, sink
        for shard in self.shards.values():
            shard.sink = sink
        every = self.settings.checkpoint.every_seconds
        last_checkpoint = last_lag = time.monotonic()
        poll = Poller(self.name)
        while not stop.is_set():
            by_tp: dict[TP, list[Record]] = {}
            for rec in poll(source, stop, idle_poll_s):
                by_tp.setdefault((rec.topic, rec.partition), []).append(rec)
            for tp, recs in by_tp.items():
                shard = self.shards.get(tp)
                if shard is not None:  # else not ours (any more): the next owner reads it
                    shard.handle(recs)
            for shard in self.shards.values():
                shard.pump()
            self._bound_memory()
            now = time.monotonic()
            if now - last_lag >= 1.0:
                last_lag = now
                self.hooks.on_keyed_models(self.models())
                report_lag(source, self.hooks, self.name)
            if now - last_checkpoint >= every:
                last_checkpoint = now
                self._checkpoint(self.shards)
        self._checkpoint(self.shards)


def check(spec: PipelineSettings) -> None:
    if spec.kind == "clicks":
        raise StreamTrainerError(
            f"pipeline {spec.name}: partitioning by_key needs events with a key per model "
            "(ticks: symbol, sensors: sensor_id, or a custom featurizer that sets keys)"
        )
