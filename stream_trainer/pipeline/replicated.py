"""One replica of a shared model under torchrun: the per-batch step of
:class:`~stream_trainer.pipeline.core.Pipeline`, in rounds with the other replicas.

Every loop iteration is a round (:meth:`ReplicatedPipeline.step`): each replica says
whether it has a batch, wants to stop, to checkpoint (rank 0), to act on a drift or to
average; all then do the same. ``allreduce``: every replica steps together, gradients
all-reduced. ``average``: each steps alone and the weights are averaged now and then.
A checkpoint is a round too: rank 0 writes the shared model with every partition's
next offset and the union of all replicas' ledgers; then each replica commits its own
partitions' offsets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stream_trainer.distributed import Replicas, fingerprint
from stream_trainer.errors import ConfigError
from stream_trainer.pipeline.commit import commit_offsets, make_durable
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.ledger import OffsetLedger
from stream_trainer.pipeline.ports import TP, Record

log = logging.getLogger(__name__)


class ReplicatedPipeline(Pipeline):
    replicated = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = self.spec
        # (embeddings keep their layout and optimizer, so that checkpoints move between
        # one process and replicas; allreduce densifies their gradients)
        if "challenger" in spec.drift.actions or spec.replay.capacity:
            raise ConfigError(
                f"pipeline {spec.name}: with replicas (torchrun), the drift action "
                "'challenger' and the replay buffer are not supported yet; set "
                "drift.actions to reset_model, reset_optimizer and/or boost_lr, "
                "and replay.capacity to 0"
            )
        self.replicas: Replicas | None = None
        self.drift_pending = False  # a detection to act on in the next round
        self._rounds = self._local_steps = 0
        self._last_avg = self.clock()

    def attach(self, replicas: Replicas) -> None:
        """Join the replicas: start from rank 0's weights (equal anyway after a restore
        from the shared checkpoint; a fresh model is seeded the same, but make sure)."""
        self.replicas = replicas
        replicas.broadcast_tensors(self.learner.sync_tensors(with_optimizer=False))

    @property
    def _rep(self) -> Replicas:
        assert self.replicas is not None, "attach() the replicas first"
        return self.replicas

    # ---- what differs from one process -------------------------------------------------
    def drift_detected(self) -> None:
        self.drift_pending = True  # every replica acts on it, in the next round

    def _drop_old_log(self, tp: TP) -> None:
        """Replicas train only in rounds: the old log's pending events are dropped."""
        self.batcher.discard(lambda it: (it.record.topic, it.record.partition) == tp)

    def on_revoke(self, tps: list[TP]) -> None:
        """What this replica learned from leaving partitions is in every replica's weights
        and in the last round's offsets, where the next owner resumes; their untrained
        events are dropped (a checkpoint here would be a collective inside the consumer's
        poll, out of step with the others)."""
        lost = set(tps)
        dropped = self.batcher.discard(lambda it: (it.record.topic, it.record.partition) in lost)
        log.info(
            "partitions revoked",
            extra={"pipeline": self.name, "untrained_dropped": dropped,
                   "partitions": ",".join(f"{t}:{p}" for t, p in tps)},
        )  # fmt: skip

    # ---- the loop ----------------------------------------------------------------------
    def step(self, records: list[Record], stopping: bool) -> bool:
        """Handle the poll, then one round with the others; False once any replica stops."""
        sync = self.spec.sync
        allreduce = sync.mode == "allreduce"
        self.handle(records)
        batch = None
        if allreduce:
            batch = self.batcher.take() if self.batcher.ready() else None
        else:
            self._local_steps += self.pump()
        now = self.clock()
        self._rounds += 1
        check = sync.check_every and self._rounds % sync.check_every == 0
        views = self._round(
            batch=batch is not None,
            stop=stopping,
            checkpoint=self._rep.rank == 0 and self._checkpoint_time(now),
            drift=self.drift_pending,
            average=not allreduce
            and (self._local_steps >= sync.every_steps
                 or (now - self._last_avg) * 1000 >= sync.every_ms),
            # allreduce: the weights are equal after every round; average: only right
            # after an averaging (checked there)
            fp=fingerprint(self.learner.sync_tensors(False)) if check and allreduce else None,
        )  # fmt: skip
        self._check(views)
        self._act(views, batch)
        stopping_all = any(v["stop"] for v in views)
        if stopping_all or any(v["checkpoint"] for v in views):
            self.checkpoint_replicated()
        if stopping_all:
            # a replica asked to stop leaves after this checkpoint; the others exit too,
            # for torchrun to restart them in a group of those that remain
            self.regroup = not self.stop.is_set()
            return False
        return True

    def _act(self, views: list[dict[str, Any]], batch: list[Any] | None) -> None:
        if any(v["batch"] for v in views):
            self.train(batch or [], reduce=self._rep.reduce_grads)
        if any(v["drift"] for v in views):
            self.drift_pending = False
            self.policy.on_drift(self.learner)
        if any(v["average"] for v in views):
            self._average()
            self._local_steps, self._last_avg = 0, self.clock()

    def checkpoint_due(self, now: float) -> bool:
        """Never between rounds: a checkpoint is a collective, so rank 0 asks for one
        in a round (:meth:`step`) and every replica takes it there, in step."""
        return False

    def _checkpoint_time(self, now: float) -> bool:
        return now - self.last_checkpoint >= self.settings.checkpoint.every_seconds

    def checkpoint(self, *, commit: bool = True) -> bool:
        return self.checkpoint_replicated()

    def finish(self) -> None:
        """The last round took the final checkpoint."""

    def _round(self, **flags: Any) -> list[dict[str, Any]]:
        """One round: every replica's flags and next offsets; the offsets of the model
        (the highest any replica reached, per partition) become ours, so a partition
        that moves here resumes where the shared model left it."""
        views = self._rep.exchange({**flags, "offsets": self.offsets.next})
        for view in views:
            self.offsets.merge_from(view["offsets"])
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
        rep = self._rep
        sig = self.learner.optimizer_signature()
        views = rep.exchange(sig)
        with_opt = all(tuple(v) == tuple(sig) for v in views)
        rep.average(self.learner.sync_tensors(with_optimizer=with_opt))
        if self.spec.sync.check_every:
            self._check(rep.exchange({"fp": fingerprint(self.learner.sync_tensors(False))}))

    def _train_out(self) -> None:
        """Before a checkpoint: every replica trains what it holds (``allreduce``: in
        lockstep) or averages (``average``)."""
        if self.spec.sync.mode != "allreduce":
            self.flush()
            self._average()
            return
        while True:
            batch = self.batcher.take() if len(self.batcher) else None
            views = self._round(batch=batch is not None)
            if not any(v["batch"] for v in views):
                return
            self.train(batch or [], reduce=self._rep.reduce_grads)

    def checkpoint_replicated(self) -> bool:
        """A checkpoint of the shared model, as a round (see the module docstring)."""
        rep = self._rep
        self._train_out()
        fresh = self.offsets.fresh
        assert fresh is not None
        t0 = time.perf_counter()
        views = self._round(fresh=fresh.state_dict(), dirty=self.offsets.dirty)
        save = None
        if rep.rank == 0 and any(v["dirty"] for v in views):
            self._merge_ledgers(views)
            save = self._save
        ok = make_durable(self.name, self.hooks, self.sink, save)
        ok, ledger = rep.broadcast(
            (ok, self.offsets.ledger.state_dict() if rep.rank == 0 else None)
        )
        self.last_checkpoint = self.clock()
        if not ok:
            return False
        self.offsets.ledger.load_state_dict(ledger)
        assert self.offsets.base is not None
        self.offsets.base.load_state_dict(ledger)
        self.offsets.fresh = OffsetLedger()
        self.offsets.dirty = False
        if save is None:  # the writer reported its own
            self.hooks.on_checkpoint(time.perf_counter() - t0, time.time())
        commit_offsets(self.source, self.offsets.next, self.name)
        return True

    def _merge_ledgers(self, views: list[dict[str, Any]]) -> None:
        """Rank 0: the last checkpoint's ledger plus every replica's fresh ranges."""
        merged = OffsetLedger()
        assert self.offsets.base is not None
        merged.load_state_dict(self.offsets.base.state_dict())
        for v in views:
            fresh = OffsetLedger()
            fresh.load_state_dict(v["fresh"])
            merged.merge(fresh)
        self.offsets.ledger = merged
