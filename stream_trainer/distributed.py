"""Replicas under torchrun: one torch.distributed process group, one Kafka consumer group.

``torchrun --nproc-per-node N -m stream_trainer run --config ...`` starts N processes
(across machines with torchrun's c10d rendezvous). Kafka splits the partitions among
them — they are members of one consumer group — and torch.distributed keeps each
pipeline's model the same on all of them: gloo on the CPU, NCCL for the gradients on
a GPU. Nothing here is a protocol of our own; the module only decides *when* to call
the collectives, so that every rank calls the same ones in the same order:

* a **round** per loop iteration: every rank contributes a small message (its next
  offsets, whether it has a batch, whether it wants to stop, checkpoint, average or
  adapt to a drift) and sees everyone's — ``all_gather_object`` on a gloo group;
* ``allreduce`` mode: when any rank has a batch that round, all of them all-reduce the
  gradients, each weighted by its number of examples (a rank without data adds zero),
  and every rank applies the same update;
* ``average`` mode: ranks step on their own data; parameters (and optimizer state,
  when every rank has the same) are averaged when the round says so;
* a **checkpoint** is a round too: rank 0 writes the model with every partition's next
  offset and the union of all ranks' offset ledgers, then every rank commits the
  offsets of its own partitions.

A rank that does not answer within ``stall_timeout_s`` makes the collective fail on the
others. They name it (from heartbeats in torchrun's store), count it, and exit, so that
torchrun restarts the group with the members that answer — from the last checkpoint,
which holds every partition's offset: nothing is lost or learned twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from stream_trainer.errors import StreamTrainerError

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0


class ReplicaStalled(StreamTrainerError):
    """A collective did not complete: a replica stalled or left."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restart: int = 0

    @property
    def replicated(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        e = os.environ if env is None else env
        try:
            return cls(
                rank=int(e.get("RANK", "0")),
                size=int(e.get("WORLD_SIZE", "1")),
                local_rank=int(e.get("LOCAL_RANK", "0")),
                restart=int(e.get("TORCHELASTIC_RESTART_COUNT", "0")),
            )
        except ValueError as err:
            raise StreamTrainerError(f"torchrun environment: {err}") from None


class Heartbeat:
    """Each rank bumps a counter in torchrun's store every second; on a failed
    collective the others read whose counter stopped (no clocks compared)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.prefix = (
            f"stream-trainer/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/{world.restart}"
        )
        self.store: Any = None
        try:
            self.store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timedelta(seconds=10),
            )
        except (KeyError, ValueError, RuntimeError) as err:
            log.warning(
                "no heartbeat store: stalled ranks cannot be named", extra={"error": str(err)}
            )
        self.stop = threading.Event()
        if self.store is not None:
            threading.Thread(target=self._beat, name="heartbeat", daemon=True).start()

    def _key(self, rank: int) -> str:
        return f"{self.prefix}/hb/{rank}"

    def _beat(self) -> None:
        while not self.stop.is_set():
            try:
                self.store.add(self._key(self.world.rank), 1)
            except Exception:  # the store's host left: nothing to report to
                return
            self.stop.wait(HEARTBEAT_S)

    def silent(self, wait_s: float = 2.5 * HEARTBEAT_S) -> list[int] | None:
        """Ranks whose heartbeat did not advance over ``wait_s``; None when unknown."""
        if self.store is None:
            return None
        try:
            before = [self.store.add(self._key(r), 0) for r in range(self.world.size)]
            time.sleep(wait_s)
            after = [self.store.add(self._key(r), 0) for r in range(self.world.size)]
        except Exception:
            return None
        return [r for r in range(self.world.size) if after[r] == before[r]]


def init_world(device: torch.device, stall_timeout_s: float) -> tuple[World, Heartbeat | None]:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1)."""
    world = World.from_env()
    if not world.replicated:
        return world, None
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=stall_timeout_s))
    except Exception as err:
        raise StreamTrainerError(
            f"could not join the replicas' process group ({backend}, rank {world.rank} of "
            f"{world.size}): {err}; launch with torchrun (see README, 'Scaling out')"
        ) from None
    log.info(
        "replica joined",
        extra={
            "rank": world.rank,
            "world_size": world.size,
            "backend": backend,
            "restart": world.restart,
        },
    )
    return world, Heartbeat(world)


def fingerprint(params: Sequence[torch.Tensor]) -> tuple[float, float]:
    """Sum and sum of squares of all weights in float64: equal on replicas that hold
    bitwise-equal weights, and (in practice) different otherwise."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in params])
    return float(flat.sum()), float((flat * flat).sum())


class Replicas:
    """The collectives of one pipeline, on groups of its own (so pipelines on their
    threads never interleave their calls)."""

    def __init__(
        self,
        world: World,
        pipeline: str,
        device: torch.device,
        *,
        stall_timeout_s: float = 60.0,
        heartbeat: Heartbeat | None = None,
        on_stall: Callable[[], None] = lambda: None,
        on_sync: Callable[[str, float], None] = lambda kind, seconds: None,
    ) -> None:
        self.world = world
        self.pipeline = pipeline
        self.device = device
        self.heartbeat = heartbeat
        self.on_stall = on_stall
        self.on_sync = on_sync
        # new groups do not inherit init_process_group's timeout (gloo's default is 30 min)
        timeout = timedelta(seconds=stall_timeout_s)
        self.group = dist.new_group(backend="gloo", timeout=timeout)
        self.tensor_group = (
            dist.new_group(backend="nccl", timeout=timeout) if device.type == "cuda" else self.group
        )

    @property
    def rank(self) -> int:
        return self.world.rank

    def _fail(self, what: str, err: BaseException) -> ReplicaStalled:
        silent = self.heartbeat.silent() if self.heartbeat is not None else None
        others = [r for r in (silent or []) if r != self.rank]
        who = (
            f"rank(s) {', '.join(map(str, others))} stalled or left (no heartbeat)"
            if others
            else "a replica stalled or left"
        )
        self.on_stall()
        log.error(
            "replica sync failed",
            extra={
                "pipeline": self.pipeline,
                "rank": self.rank,
                "during": what,
                "stalled": ",".join(map(str, others)) or "unknown",
                "error": str(err)[:300],
            },
        )
        return ReplicaStalled(
            f"pipeline {self.pipeline}: rank {self.rank}: {what} did not complete: {who}; "
            "exiting so that torchrun restarts the group from the last checkpoint"
        )

    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            out = fn()
        except ReplicaStalled:
            raise
        except Exception as err:  # gloo/NCCL: timeouts, peers gone
            raise self._fail(what, err) from None
        self.on_sync(what, time.perf_counter() - t0)
        return out

    def exchange(self, msg: Any) -> list[Any]:
        """Every rank's ``msg``, in rank order."""
        out: list[Any] = [None] * self.world.size

        def gather() -> list[Any]:
            dist.all_gather_object(out, msg, group=self.group)
            return out

        return self._run("round", gather)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.rank == 0 else None]
        self._run("broadcast", lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def reduce_grads(self, n: int, flat: torch.Tensor) -> int:
        """Sum ``flat`` (this rank's gradient times its ``n`` examples) over the ranks in
        place and divide by the total examples; returns that total."""
        count = torch.tensor([float(n)], dtype=flat.dtype, device=flat.device)
        both = torch.cat([count, flat])

        def reduce() -> None:
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=self.tensor_group)

        self._run("gradients", reduce)
        total = int(round(float(both[0])))
        if total:
            flat.copy_(both[1:] / total)
        return total

    def average(self, tensors: Sequence[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks (one flat all-reduce per dtype)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)

        def reduce() -> None:
            for ts in by_dtype.values():
                flat = torch.cat([t.detach().reshape(-1) for t in ts])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.tensor_group)
                flat /= self.world.size
                i = 0
                with torch.no_grad():
                    for t in ts:
                        t.copy_(flat[i : i + t.numel()].view_as(t))
                        i += t.numel()

        self._run("average", reduce)

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        def send() -> None:
            with torch.no_grad():
                for t in tensors:
                    dist.broadcast(t.data, src=0, group=self.tensor_group)

        self._run("broadcast", send)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # a broken group: nothing left to tidy
            log.debug("destroy_process_group failed", extra={"error": repr(err)})
