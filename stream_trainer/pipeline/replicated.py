"""One replica of a shared model under torchrun: the per-batch step of
:class:`~stream_trainer.pipeline.core.Pipeline`, in rounds with the other replicas.

A round (:meth:`ReplicatedPipeline.step`) happens when there is work: a replica joins
one when it has a batch due, when it has nothing pending (so it never holds up a busy
one), or when it has something to say (stop, checkpoint, drift, average); a replica
filling a batch polls on, and joins when the batch is due (``batch.max_latency_ms`` at
most). In a round each replica says how many batches it holds and what it wants; all
then do the same. ``allreduce``: as many synced steps as the busiest replica has
batches (a replica without one contributes nothing), gradients all-reduced — the
embeddings as the rows the step touched. ``average``: each steps alone and the
weights are averaged now and then — the embeddings' rows that changed since. A
running challenger is synced like the champion; rank 0 decides its race from every
replica's losses and every replica applies the verdict in the next round.
A checkpoint is a round too: rank 0 writes the shared model with every partition's
next offset and the union of all replicas' ledgers; then each replica commits its own
partitions' offsets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stream_trainer.distributed import Replicas, fingerprint
from stream_trainer.drift.challenger import ChallengerRace
from stream_trainer.pipeline.commit import commit_offsets, make_durable
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.ledger import OffsetLedger
from stream_trainer.pipeline.ports import TP, Record

log = logging.getLogger(__name__)

# the most synced steps one round starts (a replica with a deep backlog takes them
# back to back; flags, checkpoints and stops wait no longer than these)
MAX_STEPS_PER_ROUND = 16


class ReplicatedPipeline(Pipeline):
    replicated = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.allreduce = self.spec.sync.mode == "allreduce"
        self.replicas: Replicas | None = None
        self.drift_pending = False  # a detection to act on in the next round
        self.verdict: str | None = None  # rank 0: the race's outcome, for the next round
        self._rounds = self._local_steps = 0
        self._last_avg = self.clock()
        self._quiet = False  # the last round: nobody had work
        self._reduce: Any = None  # the current train()'s, for the challenger
        self._raced = False
        self._sync_setup(self.learner)
        if self.race is not None:
            self.race.pooled = True

    @property
    def race(self) -> ChallengerRace | None:
        return self.policy.race

    def _sync_setup(self, learner: Any) -> None:
        learner.sparse_sync = self.spec.sync.sparse
        if not self.allreduce and learner.sparse_sync:
            learner.track_rows()

    def _learners(self) -> list[Any]:
        """What the replicas keep equal: the champion, and a racing challenger."""
        race = self.race
        return [self.learner] + ([race.challenger] if race and race.challenger else [])

    def attach(self, replicas: Replicas) -> None:
        """Join the replicas: start from rank 0's weights (equal anyway after a restore
        from the shared checkpoint; a fresh model is seeded the same, but make sure)."""
        self.replicas = replicas
        for learner in self._learners():
            replicas.broadcast_tensors(learner.sync_tensors(with_optimizer=False))

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
    def poll_timeout(self, idle_s: float) -> float:
        """While every replica is quiet, poll up to a batch's latency between rounds
        (rather than spinning rounds); else as a single process does."""
        if self._quiet and not len(self.batcher):
            return max(idle_s, self.spec.batch.max_latency_ms / 1000)
        return super().poll_timeout(idle_s)

    def _batches_due(self) -> int:
        """Batches this replica can train now: the full ones, or one that is due."""
        full = len(self.batcher) // self.batcher.max_size
        return min(MAX_STEPS_PER_ROUND, full or int(self.batcher.ready()))

    def step(self, records: list[Record], stopping: bool) -> bool:
        """Handle the poll; a round with the others when there is work (see the module
        docstring); False once any replica stops."""
        sync = self.spec.sync
        self.handle(records)
        if not self.allreduce:
            self._local_steps += self.pump()
        now = self.clock()
        checkpoint = self._rep.rank == 0 and self._checkpoint_time(now)
        average = not self.allreduce and (
            self._local_steps >= sync.every_steps or (now - self._last_avg) * 1000 >= sync.every_ms
        )
        batches = self._batches_due() if self.allreduce else 0
        # a replica with work in hand (a batch filling, due within max_latency_ms; or
        # average mode's local steps) polls on; an idle one joins at once
        idle = not records and not len(self.batcher)
        if not (batches or stopping or checkpoint or average or self.drift_pending
                or self.verdict or idle):  # fmt: skip
            return True
        self._rounds += 1
        check = sync.check_every and self._rounds % sync.check_every == 0
        views = self._round(
            batches=batches,
            stop=stopping,
            checkpoint=checkpoint,
            drift=self.drift_pending,
            average=average,
            race=self.race.take_local() if self.race and self.race.active else None,
            verdict=self.verdict,
            # allreduce: the weights are equal after every round; average: only right
            # after an averaging (checked there)
            fp=self._fingerprint() if check and self.allreduce else None,
        )  # fmt: skip
        self._check(views)
        self._act(views)
        stopping_all = any(v["stop"] for v in views)
        if stopping_all or any(v["checkpoint"] for v in views):
            self.checkpoint_replicated()
        if stopping_all:
            # a replica asked to stop leaves after this checkpoint; the others exit too,
            # for torchrun to restart them in a group of those that remain
            self.regroup = not self.stop.is_set()
            return False
        return True

    def _fingerprint(self) -> tuple[float, ...]:
        return tuple(x for ln in self._learners() for x in fingerprint(ln.sync_tensors(False)))

    def _act(self, views: list[dict[str, Any]]) -> None:
        self._race_round(views)
        steps = max(v.get("batches", 0) for v in views)
        self._quiet = not steps and not any(v.get("average") for v in views)
        for _ in range(steps):  # every replica the same number of synced steps
            batch = self.batcher.take() if self.batcher.ready() else []
            self.train(batch, reduce=self._rep.reduce_grads)
        if any(v["drift"] for v in views):
            self.drift_pending = False
            self.policy.on_drift(self.learner)
            if self.race is not None and self.race.challenger is not None:
                self._sync_setup(self.race.challenger)  # the same fresh weights everywhere
                self._rep.broadcast_tensors(self.race.challenger.sync_tensors(False))
        if any(v["average"] for v in views):
            self._average()
            self._local_steps, self._last_avg = 0, self.clock()

    def _race_round(self, views: list[dict[str, Any]]) -> None:
        """Pool every replica's race losses (the same numbers, in rank order, on every
        replica); apply the verdict rank 0 announced; rank 0 judges for the next round."""
        race = self.race
        if race is None:
            return
        verdict, self.verdict = views[0].get("verdict"), None
        if verdict is not None and race.active:
            promoted = race.challenger
            self._settled(race.settle(verdict))
            if promoted is not None and self.learner is promoted and not self.allreduce:
                self._average()  # average mode: the new champion equal everywhere now
        if race.active:
            race.pool([v["race"] for v in views if v.get("race")])
            if self._rep.rank == 0:
                self.verdict = race.verdict()

    def _compete(self, fb: Any, losses: Any) -> None:
        """The challenger learns from the champion's batch (replicas in allreduce mode:
        a synced step); the race is decided in the rounds (:meth:`_race_round`)."""
        if self.race is not None and self.race.active:
            self.race.step(fb.inputs, fb.targets, losses, reduce=self._reduce)
            self._raced = True

    def train(self, items: list[Any], reduce: Any = None) -> None:
        """Core's ``train``; with a racing challenger in allreduce mode, the challenger
        takes its synced step too when the champion's batch was empty or refused."""
        self._reduce, self._raced = reduce, False
        super().train(items, reduce)
        race = self.race
        if reduce is not None and race is not None and race.active and not self._raced:
            race.challenger.idle_step(reduce)  # type: ignore[union-attr]

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
        for learner in self._learners():
            sig = learner.optimizer_signature()
            views = rep.exchange(sig)
            with_opt = all(tuple(v) == tuple(sig) for v in views)
            if learner.sparse_sync:  # the rows any replica changed, the rest whole
                whole, tables = learner.sync_parts(with_opt)
                rep.average(whole, tables, learner.take_touched())
            else:
                rep.average(learner.sync_tensors(with_optimizer=with_opt))
        if self.spec.sync.check_every:
            self._check(rep.exchange({"fp": self._fingerprint()}))

    def _train_out(self) -> None:
        """Before a checkpoint: every replica trains what it holds (``allreduce``: in
        lockstep) or averages (``average``)."""
        if not self.allreduce:
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
