"""One replica of a shared model under torchrun: the per-batch step of
:class:`~stream_trainer.pipeline.core.Pipeline`, in rounds with the other replicas.

A round (:meth:`ReplicatedPipeline.step`) is a collective: every replica says what it
holds and wants (stop, checkpoint, drift, a race verdict) and sees everyone's, and all
then do the same. Every replica must call the same collectives in the same order, so
the rounds are the only meeting points; *when* a replica joins one only decides how
long it waits there for the others.

``allreduce``: a round happens when there is work: a replica joins one when it has a
batch due, when it has nothing pending (so it never holds up a busy one), or when it
has something to say; a replica filling a batch polls on, and joins when the batch is
due (``batch.max_latency_ms`` at most). In the round, as many synced steps as the
busiest replica has batches (a replica without one contributes nothing), gradients
all-reduced — the embeddings as the rows the step touched.

``average``: each replica trains its own batches as one process does, with no round
per batch; the replicas meet on a schedule they agree on in each round (the next one
after ``sync.every_ms``, sooner when the busiest replica's pace would take it
``sync.every_steps`` steps before), so a busy replica and an idle one arrive together;
flags wait for that round. None joins before that time (it would wait there, idle) or
starts a step after it (the others would wait for it), and the pace counts the time of
every step it counts. There the weights are averaged, each replica's copy weighed
by the events it trained since the last averaging — the embeddings on the rows that
changed, each row over the replicas that changed it.

A running challenger is synced like the champion; rank 0 decides its race from every
replica's losses and every replica applies the verdict in the next round. A
checkpoint is a round too: rank 0 writes the shared model with every partition's next
offset and the union of all replicas' ledgers; then each replica commits its own
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
        self._rounds = self._averages = 0
        # average mode: local steps since the last round, the events trained at the last
        # averaging, when the last round ended and when the next one is due
        self._local_steps = 0
        self._trained_at_avg = 0
        self._round_end = self._next_round = 0.0
        self._restart_schedule()
        self._quiet = False  # the last round: nobody had work
        self._lag = self._others_lag = 0  # consumer lag: this replica's, the others' summed
        self._reduce: Any = None  # the current train()'s, for the challenger
        self._raced = False
        self._final_checkpoint = False  # the last round's checkpoint was written
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
        self._trained_at_avg = self.counters["trained"]  # (restored with a checkpoint)
        self._restart_schedule()
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
        """allreduce: while every replica is quiet, poll up to a batch's latency between
        rounds (rather than spinning rounds); average: never past the next round."""
        if not self.allreduce:
            left = max(0.0, self._next_round - self.clock())
            return min(super().poll_timeout(idle_s), left)
        if self._quiet and not len(self.batcher):
            return max(idle_s, self.spec.batch.max_latency_ms / 1000)
        return super().poll_timeout(idle_s)

    def _fit_batches(self, lag: int) -> None:
        """Batch sizes follow the whole group's lag, the shared model's backlog (as one
        process behind by all of it would): this replica's, plus the others' as the
        last round carried them."""
        self._lag = lag
        super()._fit_batches(lag + self._others_lag)

    def _batches_due(self) -> int:
        """Batches this replica can train now: the full ones, or one that is due."""
        full = len(self.batcher) // self.batcher.max_size
        return min(MAX_STEPS_PER_ROUND, full or int(self.batcher.ready()))

    def step(self, records: list[Record], stopping: bool) -> bool:
        """Handle the poll; a round with the others when it is time (see the module
        docstring); False once any replica stops."""
        sync = self.spec.sync
        self.handle(records)
        self.publish_pending()
        now = self.clock()
        checkpoint = self._rep.rank == 0 and self._checkpoint_time(now)
        if self.allreduce:
            batches = self._batches_due()
            # a replica with a batch filling (due within max_latency_ms) polls on; an
            # idle one joins at once
            idle = not records and not len(self.batcher)
            news = checkpoint or self.drift_pending or self.verdict
            if not (batches or stopping or idle or news):
                return True
            # behind (the poll came back full: more is waiting): poll on until a round's
            # worth of batches is pending, so that one exchange serves many synced steps
            behind = len(records) >= self.settings.kafka.max_poll_records
            if behind and batches < MAX_STEPS_PER_ROUND and not (stopping or news):
                return True
        else:
            batches = 0
            caught_up = len(records) < self.settings.kafka.max_poll_records
            # no step starts after the agreed time: the others wait in the round for this
            # replica's step in flight, not for a whole poll's steps
            self._local_steps += self._pump_until(self._next_round, caught_up)
            # the clock after the steps: the pace sent below counts their time (read
            # before them, the poll's steps took none: the pace came out too high and
            # the next round too soon)
            now = self.clock()
            # only the agreed time (a stop does not wait for it): a replica that joined
            # on its own count of steps waited there, idle, until the others' time came
            if not (now >= self._next_round or stopping):
                return True
        self._rounds += 1
        check = sync.check_every and self._rounds % sync.check_every == 0
        views = self._round(
            batches=batches,
            stop=stopping,
            checkpoint=checkpoint,
            drift=self.drift_pending,
            race=self.race.take_local() if self.race and self.race.active else None,
            verdict=self.verdict,
            # average mode: the pace since the last round, for the next one's time
            steps=self._local_steps,
            elapsed=now - self._round_end,
            lag=self._lag,
            # allreduce: the weights are equal after every round; average: only right
            # after an averaging (checked there)
            fp=self._fingerprint() if check and self.allreduce else None,
        )  # fmt: skip
        self._others_lag = sum(v["lag"] for r, v in enumerate(views) if r != self._rep.rank)
        self._check(views)
        self._act(views)
        stopping_all = any(v["stop"] for v in views)
        if stopping_all or any(v["checkpoint"] for v in views):
            self._final_checkpoint = self.checkpoint_replicated()
        if stopping_all:
            # a replica asked to stop leaves after this checkpoint; the others exit too,
            # for torchrun to restart them in a group of those that remain
            self.regroup = not self.stop.is_set()
            return False
        if not self.allreduce:
            self._schedule(views)
            self._local_steps += self._pump_until(self._next_round, caught_up)
        return True

    def _pump_until(self, deadline: float, caught_up: bool) -> int:
        """:meth:`pump <stream_trainer.pipeline.core.Pipeline.pump>`, but no step starts
        at or after ``deadline`` while the batcher holds at most one poll's records (the
        rest waits for the next step; more than that is trained now whatever the time:
        polls never pile up). How many steps ran."""
        n, most = 0, self.settings.kafka.max_poll_records
        while (self.clock() < deadline or len(self.batcher) > most) and (
            self.batcher.ready() or (caught_up and len(self.batcher))
        ):
            self.train(self.batcher.take())
            n += 1
        return n

    def _restart_schedule(self, interval: float | None = None) -> None:
        """average: the next round ``interval`` (default ``sync.every_ms``) from now."""
        if interval is None:
            interval = self.spec.sync.every_ms / 1000
        self._round_end = self.clock()
        self._next_round = self._round_end + interval

    def _schedule(self, views: list[dict[str, Any]]) -> None:
        """average: when the next round is due, the same interval on every replica (from
        the round's views), counted from the end of this one: ``sync.every_ms``, or
        less when the busiest replica, at its pace since the last round, would take
        ``sync.every_steps`` steps sooner."""
        sync = self.spec.sync
        interval = sync.every_ms / 1000
        pace = max(v["steps"] / v["elapsed"] if v["elapsed"] > 0 else 0.0 for v in views)
        if pace > 0:
            interval = min(interval, sync.every_steps / pace)
        self._local_steps = 0
        self._restart_schedule(interval)

    def _fingerprint(self) -> tuple[float, ...]:
        return tuple(x for ln in self._learners() for x in fingerprint(ln.sync_tensors(False)))

    def _act(self, views: list[dict[str, Any]]) -> None:
        self._race_round(views)
        steps = max(v["batches"] for v in views)
        self._quiet = not steps
        for _ in range(steps):  # every replica the same number of synced steps
            batch = self.batcher.take() if self.batcher.ready() else []
            self.train(batch, reduce=self._rep.reduce_grads)
        if any(v["drift"] for v in views):
            self.drift_pending = False
            self.policy.on_drift(self.learner)
            if self.race is not None and self.race.challenger is not None:
                self._sync_setup(self.race.challenger)  # the same fresh weights everywhere
                self._rep.broadcast_tensors(self.race.challenger.sync_tensors(False))
        if not self.allreduce and any(v["steps"] for v in views):
            self._average()

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
            assert race.challenger is not None  # (active: it has one)
            race.challenger.idle_step(reduce)

    def checkpoint_due(self, now: float) -> bool:
        """Never between rounds: a checkpoint is a collective, so rank 0 asks for one
        in a round (:meth:`step`) and every replica takes it there, in step."""
        return False

    def _checkpoint_time(self, now: float) -> bool:
        return now - self.last_checkpoint >= self.settings.checkpoint.every_seconds

    def checkpoint(self, *, commit: bool = True) -> bool:
        return self.checkpoint_replicated()

    def periodic_checkpoint(self) -> bool:
        return self.checkpoint_replicated()

    def finish(self) -> bool:
        """The last round took the final checkpoint (True when it was written)."""
        return self._final_checkpoint

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
        """Average the learners over the replicas, each replica's copy weighed by the
        events it trained since the last averaging (at least 1, so that the mean is
        defined when none trained; one that trained nothing then counts next to
        nothing), the optimizers' state too when every replica's has the same shape."""
        rep = self._rep
        trained = self.counters["trained"]
        weight, self._trained_at_avg = max(1, trained - self._trained_at_avg), trained
        for learner in self._learners():
            sig = learner.optimizer_signature()
            views = rep.exchange((sig, weight))
            with_opt = all(tuple(s) == tuple(sig) for s, _ in views)
            weights = [float(w) for _, w in views]
            if learner.sparse_sync:  # the rows any replica changed, the rest whole
                whole, tables = learner.sync_parts(with_opt)
                rep.average(whole, tables, learner.take_touched(), weights=weights)
            else:
                rep.average(learner.sync_tensors(with_optimizer=with_opt), weights=weights)
        # a fingerprint of the weights costs ~40 ms for the default clicks model: every
        # check_every-th averaging, as allreduce checks every check_every-th round
        self._averages += 1
        every = self.spec.sync.check_every
        if every and self._averages % every == 0:
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
