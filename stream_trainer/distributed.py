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
import pickle
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from stream_trainer import stopping
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
    local_size: int = 1  # replicas on this machine (they share its cores)

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
                local_size=max(1, int(e.get("LOCAL_WORLD_SIZE", "1"))),
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
        with stopping.default_action():  # (a stop before it: the first round's)
            dist.init_process_group(  # NCCL: this rank's own GPU (pick_device's)
                backend, timeout=timedelta(seconds=stall_timeout_s),
                device_id=device if device.type == "cuda" else None,
            )  # fmt: skip
    except Exception as err:
        raise StreamTrainerError(
            f"could not join the replicas' process group ({backend}, rank {world.rank} of "
            f"{world.size}): {err}; launch with torchrun (see docs/how-to/scaling-out.md)"
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
        self.sent_bytes: dict[str, int] = {}  # payload put into collectives, by kind
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
        self.sent_bytes["round"] = self.sent_bytes.get("round", 0) + len(pickle.dumps(msg))

        def gather() -> list[Any]:
            dist.all_gather_object(out, msg, group=self.group)
            return out

        return self._run("round", gather)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj if self.rank == 0 else None]
        self._run("broadcast", lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def _sent(self, kind: str, tensors: Sequence[torch.Tensor]) -> None:
        """Count the bytes this rank puts into a collective (its payload: a ring
        all-reduce sends about twice that over the wire, a ring all-gather its share
        ``size - 1`` times)."""
        self.sent_bytes[kind] = self.sent_bytes.get(kind, 0) + sum(
            t.numel() * t.element_size() for t in tensors
        )

    def _gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.empty_like(t) for _ in range(self.world.size)]
        dist.all_gather(out, t, group=self.tensor_group)
        return out

    def reduce_grads(
        self, n: int, flat: torch.Tensor, rows: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Sum the gradients of the ranks and divide by their examples.

        ``flat``: this rank's dense gradient times its ``n`` examples, left as the mean
        in place. ``rows``: per embedding table, the (row ids, gradient rows times
        ``n``) this rank touched; returned as every rank's rows (in rank order, a row
        touched by two ranks twice: the optimizer's coalesce sums them) over the total.
        With no rows, one all-reduce of ``flat``; with rows, two all-gathers (the
        sizes; then the ids, the dense gradient and the rows in one buffer) whose size
        is the rows touched, not the tables. Returns (total examples, rows)."""
        if not rows:
            return self._reduce_dense(n, flat), []
        return self._run("gradients", lambda: self._reduce_sparse(n, flat, list(rows)))

    def _reduce_dense(self, n: int, flat: torch.Tensor) -> int:
        count = torch.tensor([float(n)], dtype=flat.dtype, device=flat.device)
        both = torch.cat([count, flat])

        def reduce() -> None:
            dist.all_reduce(both, op=dist.ReduceOp.SUM, group=self.tensor_group)

        self._sent("gradients", [both])
        self._run("gradients", reduce)
        total = int(round(float(both[0])))
        if total:
            flat.copy_(both[1:] / total)
        return total

    def _reduce_sparse(
        self, n: int, flat: torch.Tensor, rows: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]]]:
        dev = flat.device
        counts = [int(ids.numel()) for ids, _ in rows]
        widths = [_width(v) for _, v in rows]
        meta = torch.tensor([n, *counts], dtype=torch.long, device=dev)
        metas = torch.stack(self._gather(meta)).tolist()
        total = sum(m[0] for m in metas)
        self._sent("gradients", [meta])
        if total == 0:
            return 0, []
        # one gather for the ids, the dense gradient and the rows: the ids' bytes ride
        # in the gradient's dtype (a gather copies bytes, it never adds them)
        k = torch.empty(0, dtype=torch.long).element_size() // flat.element_size()
        d = flat.numel()
        sizes = [k * sum(m[1:]) + d + sum(c * w for c, w in zip(m[1:], widths, strict=True))
                 for m in metas]  # fmt: skip
        buf = torch.zeros(max(sizes), dtype=flat.dtype, device=dev)
        mine = torch.cat([i for i, _ in rows]).view(flat.dtype)
        buf[: sizes[self.rank]] = torch.cat([mine, flat, *(v.reshape(-1) for _, v in rows)])
        self._sent("gradients", [buf])
        gathered = self._gather(buf)
        parts = []
        for m, g in zip(metas, gathered, strict=True):
            n_ids = k * sum(m[1:])
            parts.append((g[:n_ids].view(torch.long), g[n_ids : n_ids + d], g[n_ids + d :]))
        flat.copy_(torch.stack([dense for _, dense, _ in parts]).sum(0) / total)
        out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in rows]
        for m, (r_ids, _, r_vals) in zip(metas, parts, strict=True):
            i = j = 0
            for s, (c, w) in enumerate(zip(m[1:], widths, strict=True)):
                out[s][0].append(r_ids[i : i + c])
                out[s][1].append(r_vals[j : j + c * w].view(c, *rows[s][1].shape[1:]))
                i, j = i + c, j + c * w
        return total, [(torch.cat(i), torch.cat(v) / total) for i, v in out]

    def average(
        self,
        tensors: Sequence[torch.Tensor],
        tables: Sequence[Sequence[torch.Tensor]] = (),
        touched: Sequence[torch.Tensor] = (),
        weights: Sequence[float] | None = None,
    ) -> None:
        """Replace each tensor by its mean over the ranks (one flat all-reduce per dtype),
        each rank's copy weighed by ``weights`` (every rank's, in rank order, the same
        list on each; None: equal). Each rank adds its tensors times its weight; the
        sum is divided by the weights' sum.

        ``tables``: per embedding table, the table and its optimizer state shaped like
        it; ``touched``: the rows this rank changed in each since the last averaging.
        Only the rows any rank changed are averaged (the others are equal everywhere
        already), each over the ranks that changed it (a row one replica trained takes
        its value, not half of it): their ids are all-gathered, then they join the one
        all-reduce."""
        w = [float(x) for x in weights] if weights is not None else [1.0] * self.world.size
        mine, total = w[self.rank], sum(w)

        def reduce() -> None:
            union = self._union(touched, w) if tables else []
            Part = tuple[torch.Tensor, Callable[[torch.Tensor], Any]]  # sum in, put out
            by_dtype: dict[torch.dtype, list[Part]] = {}
            for t in tensors:
                # on this replica's device: optimizers keep some state (``step``) on the host
                summand = t.detach().to(self.device) * mine
                by_dtype.setdefault(t.dtype, []).append((summand, _mean_into(t, total)))
            for group, (ids, den, mask) in zip(tables, union, strict=True):
                for t in group:
                    share = (mask * mine).to(t.dtype).view(-1, *([1] * (t.dim() - 1)))
                    rows = t.detach()[ids] * share
                    by_dtype.setdefault(t.dtype, []).append((rows, _rows_into(t, ids, den)))
            for parts in by_dtype.values():
                flat = torch.cat([t.reshape(-1) for t, _ in parts])
                self._sent("average", [flat])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.tensor_group)
                i = 0
                with torch.no_grad():
                    for t, put in parts:
                        put(flat[i : i + t.numel()].view_as(t))
                        i += t.numel()

        self._run("average", reduce)

    def _union(
        self, touched: Sequence[torch.Tensor], weights: Sequence[float]
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per table, the rows any rank changed (sorted), per row the weights of the
        ranks that changed it, summed (the same on every rank), and which of the rows
        this rank changed (1.0) or not (0.0)."""
        dev = touched[0].device if touched else self.device
        meta = torch.tensor([t.numel() for t in touched], dtype=torch.long, device=dev)
        metas = torch.stack(self._gather(meta)).tolist()
        longest = max(sum(m) for m in metas)
        ids = torch.zeros(longest, dtype=torch.long, device=dev)
        if touched:
            ids[: int(meta.sum())] = torch.cat(list(touched))
        self._sent("average", [meta, ids])
        gathered = self._gather(ids)
        per_rank: list[list[torch.Tensor]] = [[] for _ in touched]
        for m, got in zip(metas, gathered, strict=True):
            i = 0
            for s, k in enumerate(m):
                per_rank[s].append(got[i : i + k])
                i += k
        out = []
        for parts in per_rank:
            union = torch.unique(torch.cat(parts))
            den = torch.zeros(union.numel(), dtype=torch.float64, device=dev)
            own = den
            for r, (w, rows) in enumerate(zip(weights, parts, strict=True)):
                changed = torch.isin(union, rows).double()
                den = den + w * changed
                if r == self.rank:
                    own = changed
            out.append((union, den, own))
        return out

    def broadcast_tensors(self, tensors: Sequence[torch.Tensor]) -> None:
        def send() -> None:
            with torch.no_grad():
                for t in tensors:
                    dist.broadcast(t.data, src=0, group=self.tensor_group)

        self._run("broadcast", send)


def _width(t: torch.Tensor) -> int:
    """Elements per row of a (rows, ...) tensor, also when it has no rows."""
    w = 1
    for d in t.shape[1:]:
        w *= int(d)
    return w


def _mean_into(t: torch.Tensor, total: float) -> Callable[[torch.Tensor], Any]:
    """Put a weighted sum over the ranks into ``t`` as the mean."""
    return lambda summed: t.copy_(summed / total)


def _rows_into(
    t: torch.Tensor, ids: torch.Tensor, den: torch.Tensor
) -> Callable[[torch.Tensor], Any]:
    """Put the rows' weighted sums into ``t``'s rows ``ids`` as their means (``den``:
    per row, the weights of the ranks that changed it)."""
    scale = den.to(t.dtype).view(-1, *([1] * (t.dim() - 1)))
    return lambda summed: t.index_copy_(0, ids, summed / scale)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as err:  # a broken group: nothing left to tidy
            log.debug("destroy_process_group failed", extra={"error": repr(err)})
