"""Replicas' collectives in-process: two gloo ranks on loopback, no broker."""

from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stream_trainer.distributed import Replicas, World, fingerprint
from stream_trainer.learner import Learner
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.producers import make_generator


def _learner(seed: int = 0) -> tuple[Learner, object]:
    torch.manual_seed(seed)
    feat = build_featurizer("clicks", {"id_buckets": 4096, "pair_buckets": 4096})
    model = build_model("clicks", {"dim": 8, "hidden": 16}, feat)
    return Learner(model, feat.task, lr=0.01, grad_clip_norm=1.0, sparse_embeddings=True), feat


def _batches(feat, rank: int, steps: int):
    events = list(make_generator("clicks", seed=10 + rank, count=64 * steps))
    return [feat.featurize(events[i : i + 64]) for i in range(0, len(events), 64)]


def _worker(rank: int, port: int, out: dict, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2)
        rep = Replicas(world, "p", torch.device("cpu"), stall_timeout_s=30)
        learner, feat = _learner(seed=rank)  # different initial weights on purpose
        rep.broadcast_tensors(learner.sync_tensors(with_optimizer=False))
        prints = []
        for k, fb in enumerate(_batches(feat, rank, 6)):
            if mode == "allreduce":
                if rank == 1 and k == 2:
                    learner.idle_step(rep.reduce_grads)  # no data this round: adds zero
                else:
                    learner.step(fb.inputs, fb.targets, reduce=rep.reduce_grads)
            else:
                learner.step(fb.inputs, fb.targets)
                if k % 3 == 2:
                    sig = learner.optimizer_signature()
                    views = rep.exchange(sig)
                    rep.average(learner.sync_tensors(all(tuple(v) == sig for v in views)))
                else:
                    prints.append(None)
                    continue
            prints.append(fingerprint(learner.sync_tensors(False)))
        out[rank] = (prints, learner.updates)
    finally:
        dist.destroy_process_group()


def _run(mode: str) -> dict:
    from stream_trainer.local.broker import free_port

    out = mp.Manager().dict()
    mp.start_processes(_worker, args=(free_port(), out, mode), nprocs=2, start_method="spawn")
    return dict(out)


@pytest.mark.parametrize("mode", ["allreduce", "average"])
def test_two_ranks_hold_identical_weights_after_each_sync(mode):
    out = _run(mode)
    (p0, u0), (p1, u1) = out[0], out[1]
    assert p0 == p1 and any(p is not None for p in p0)
    assert u0 == u1 == 6


def test_allreduce_step_equals_one_step_on_both_batches():
    """Synchronous data parallel is the same update as one process on the union: the
    gradients are weighted by each rank's examples."""
    learner, feat = _learner()
    twin = copy.deepcopy(learner)
    a, b = _batches(feat, 0, 1)[0], _batches(feat, 1, 1)[0]
    b_inputs = {k: v[:40] for k, v in b.inputs.items()}  # uneven: 64 and 40 examples
    grads = {}

    def reduce(n: int, flat: torch.Tensor) -> int:  # records each rank's contribution
        grads.setdefault("parts", []).append((n, flat.clone()))
        return 0  # (no update on these throwaway copies)

    # rank views, computed one after the other with the same starting weights
    r0 = copy.deepcopy(learner)
    r0.step(a.inputs, a.targets, reduce=reduce)
    r1 = copy.deepcopy(learner)
    r1.step(b_inputs, b.targets[:40], reduce=reduce)
    (n0, g0), (n1, g1) = grads["parts"]
    total = (g0 + g1) / (n0 + n1)

    def combined(n: int, flat: torch.Tensor) -> int:
        flat.copy_(total)
        return n0 + n1

    learner.step(a.inputs, a.targets, reduce=combined)
    both = {k: np.concatenate([a.inputs[k], b_inputs[k]]) for k in a.inputs}
    twin.step(both, np.concatenate([a.targets, b.targets[:40]]))
    for p, q in zip(learner.model.parameters(), twin.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
