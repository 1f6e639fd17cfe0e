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

from stream_trainer.config import Settings
from stream_trainer.pipeline import build
from stream_trainer.pipeline.commit import commit_offsets
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import NullHooks, PipelineHooks
from stream_trainer.pipeline.loop import IDLE_POLL_S, report_lag, run_loop
from stream_trainer.pipeline.ports import TP, Record, Sink, Source
from stream_trainer.pipeline.runner import ready
from stream_trainer.pipeline_config import PipelineSettings

log = logging.getLogger(__name__)


class ShardedPipeline:
    """A :class:`~stream_trainer.pipeline.runner.Runner`: one shard per held partition."""

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
        self.hooks: PipelineHooks = hooks or NullHooks()
        self.root = build.shard_root(settings, spec)
        self.shards: dict[TP, Pipeline] = {}
        self.output = build.output_topic(spec)
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.failed: str | None = None
        self.restored = False
        self.regroup = False  # by_key needs no sync: nothing to regroup
        self.last_checkpoint = time.monotonic()
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
        return ready(self, self.source)

    def summary(self) -> dict[str, Any]:
        total: dict[str, Any] = {"updates": 0}
        for shard in self.shards.values():
            for k, v in shard.counters.items():
                total[k] = total.get(k, 0) + v
            total["updates"] += shard.learner.updates
        return {**total, "shards": len(self.shards), "models": self.models()}

    def models(self) -> int:
        return sum(len(s.learner) for s in self.shards.values())

    # ---- the loop's steps --------------------------------------------------------------
    def run(
        self,
        source: Source,
        sink: Sink | None,
        stop: threading.Event,
        *,
        idle_poll_s: float = IDLE_POLL_S,
    ) -> None:
        self.source, self.sink = source, sink
        for shard in self.shards.values():
            shard.sink = sink
        run_loop(self, source, stop, self.name, idle_poll_s=idle_poll_s)

    def poll_timeout(self, idle_s: float) -> float:
        return idle_s

    def step(self, records: list[Record], stopping: bool) -> bool:
        if stopping:
            return False
        by_tp: dict[TP, list[Record]] = {}
        for rec in records:
            by_tp.setdefault((rec.topic, rec.partition), []).append(rec)
        for tp, recs in by_tp.items():
            shard = self.shards.get(tp)
            if shard is not None:  # else not ours (any more): the next owner reads it
                shard.handle(recs)
        for shard in self.shards.values():
            shard.pump()
        self._bound_memory()
        return True

    def every_second(self, now: float) -> None:
        self.hooks.on_keyed_models(self.models())
        if self.source is not None:
            report_lag(self.source, self.hooks, self.name)
        for shard in self.shards.values():
            shard.warn_rejects(now)

    def checkpoint_due(self, now: float) -> bool:
        return now - self.last_checkpoint >= self.settings.checkpoint.every_seconds

    def checkpoint(self) -> bool:
        self.last_checkpoint = time.monotonic()
        return self._checkpoint(self.shards)

    def periodic_checkpoint(self) -> bool:
        return self.checkpoint()

    def finish(self) -> bool:
        return self._checkpoint(self.shards)

    def _checkpoint(self, shards: Mapping[TP, Pipeline]) -> bool:
        """Each shard's checkpoint (flush -> save), then one commit of their offsets."""
        offsets: dict[TP, int] = {}
        ok = True
        for tp, shard in shards.items():
            if not shard.checkpoint(commit=False):
                ok = False
            elif tp in shard.next_offsets:
                offsets[tp] = shard.next_offsets[tp]
        commit_offsets(self.source, offsets, self.name)
        return ok

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
