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


def _average(rep: Replicas, learner: Learner) -> None:
    """What ReplicatedPipeline._average does: optimizer state too when the ranks' match."""
    sig = learner.optimizer_signature()
    with_opt = all(tuple(v) == sig for v in rep.exchange(sig))
    if learner.sparse_sync:
        whole, tables = learner.sync_parts(with_opt)
        rep.average(whole, tables, learner.take_touched())
    else:
        rep.average(learner.sync_tensors(with_opt))


def _identical(rank: int, mode: str, sparse: bool) -> tuple:
    world = World(rank=rank, size=2)
    rep = Replicas(world, "p", torch.device("cpu"), stall_timeout_s=30)
    learner, feat = _learner(seed=rank)  # different initial weights on purpose
    learner.sparse_sync = sparse
    if mode == "average" and sparse:
        learner.track_rows()
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
                _average(rep, learner)
            else:
                prints.append(None)
                continue
        prints.append(fingerprint(learner.sync_tensors(True)))
    return prints, learner.updates, rep.sent_bytes


IDENTICAL = [(m, s) for m in ("allreduce", "average") for s in (True, False)]


def _worker(rank: int, port: int, out: dict) -> None:
    """Every two-rank scenario of this module in one process group: spawning two ranks
    (torch's import in each) costs more than all the scenarios together."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        res: dict = {key: _identical(rank, *key) for key in IDENTICAL}
        res["twins"] = _twins(rank)
        res["weighted"] = _weighted(rank)
        out[rank] = res
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> dict:
    """The two ranks' results of every scenario (one spawn for the module; its tests
    share an xdist group, tests/conftest.py)."""
    from stream_trainer.local.broker import free_port

    out = mp.Manager().dict()
    mp.start_processes(_worker, args=(free_port(), out), nprocs=2, start_method="spawn")
    return dict(out)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("mode", ["allreduce", "average"])
def test_two_ranks_hold_identical_weights_after_each_sync(ranks, mode, sparse):
    """Weights and optimizer state (the sparse tables' Adagrad sums too) are bitwise
    equal on both ranks after every sync, with rows or with whole tables."""
    (p0, u0, _), (p1, u1, _) = ranks[0][mode, sparse], ranks[1][mode, sparse]
    assert p0 == p1 and any(p is not None for p in p0)
    assert u0 == u1 == 6


def _twins(rank: int) -> tuple:
    """Each rank steps two copies of one learner on its batches: one syncing rows, one
    syncing densified tables; their weights and optimizer state are compared."""
    rep = Replicas(World(rank=rank, size=2), "p", torch.device("cpu"), stall_timeout_s=30)
    rows, feat = _learner(seed=0)
    whole = copy.deepcopy(rows)
    whole.sparse_sync = False
    for k, fb in enumerate(_batches(feat, rank, 4)):
        for learner in (rows, whole):
            if rank == 1 and k == 1:
                learner.idle_step(rep.reduce_grads)
            else:
                learner.step(fb.inputs, fb.targets, reduce=rep.reduce_grads)
    return (
        [t.clone() for t in rows.sync_tensors(True)],
        [t.clone() for t in whole.sync_tensors(True)],
        rows.updates,
    )


def test_a_sparse_round_makes_the_dense_round_s_update(ranks):
    out = {rank: ranks[rank]["twins"] for rank in (0, 1)}
    for rank in (0, 1):
        sparse, dense, updates = out[rank]
        assert updates == 4 and len(sparse) == len(dense)
        for a, b in zip(sparse, dense, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and the ranks agree (bitwise: the same rows in the same order on both)
    for a, b in zip(out[0][0], out[1][0], strict=True):
        assert torch.equal(a, b)


def test_allreduce_step_equals_one_step_on_both_batches():
    """Synchronous data parallel is the same update as one process on the union: the
    gradients are weighted by each rank's examples."""
    learner, feat = _learner()
    # the sync arithmetic alone: the running baseline evolves inside a batch (each row sees
    # the targets before it), so one batch of both and two halves see other offsets
    learner.baseline = learner.mixture = None
    twin = copy.deepcopy(learner)
    a, b = _batches(feat, 0, 1)[0], _batches(feat, 1, 1)[0]
    b_inputs = {k: v[:40] for k, v in b.inputs.items()}  # uneven: 64 and 40 examples
    grads = {}

    def reduce(n: int, flat: torch.Tensor, rows):  # records each rank's contribution
        grads.setdefault("parts", []).append((n, flat.clone(), rows))
        return 0, []  # (no update on these throwaway copies)

    # rank views, computed one after the other with the same starting weights
    r0 = copy.deepcopy(learner)
    r0.step(a.inputs, a.targets, reduce=reduce)
    r1 = copy.deepcopy(learner)
    r1.step(b_inputs, b.targets[:40], reduce=reduce)
    (n0, g0, rows0), (n1, g1, rows1) = grads["parts"]
    total = (g0 + g1) / (n0 + n1)
    assert rows0 and len(rows0) == len(rows1)  # the tables sync as rows

    def combined(n: int, flat: torch.Tensor, rows):
        flat.copy_(total)
        return n0 + n1, [
            (torch.cat([i0, i1]), torch.cat([v0, v1]) / (n0 + n1))
            for (i0, v0), (i1, v1) in zip(rows0, rows1, strict=True)
        ]

    learner.step(a.inputs, a.targets, reduce=combined)
    both = {k: np.concatenate([a.inputs[k], b_inputs[k]]) for k in a.inputs}
    twin.step(both, np.concatenate([a.targets, b.targets[:40]]))
    for p, q in zip(learner.model.parameters(), twin.model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def _weighted(rank: int) -> tuple:
    rep = Replicas(World(rank=rank, size=2), "p", torch.device("cpu"), stall_timeout_s=30)
    dense = torch.full((3,), 10.0 * (rank + 1))  # 10 on rank 0, 20 on rank 1
    table = torch.zeros(5, 2)  # equal everywhere at the last averaging: zeros
    state = torch.zeros(5, 2)  # its optimizer state, shaped like it
    touched = torch.tensor([1, 2] if rank == 0 else [2, 3])
    table[touched] = 10.0 * (rank + 1)
    state[touched] = 1.0 + rank
    rep.average([dense], [[table, state]], [touched], weights=[3.0, 1.0])
    return dense.clone(), table.clone(), state.clone()


def test_averaging_weighs_each_rank_and_a_row_only_where_it_changed(ranks):
    """Each rank's copy counts by its weight (the events it trained since the last
    averaging); a row counts only on the ranks that changed it: a row one replica
    trained keeps what it learned instead of half of it, as the stale copies would
    make it."""
    out = {rank: ranks[rank]["weighted"] for rank in (0, 1)}
    for rank in (0, 1):
        dense, table, state = out[rank]
        torch.testing.assert_close(dense, torch.full((3,), (3 * 10.0 + 20.0) / 4))
        expected = torch.tensor([0.0, 10.0, (3 * 10.0 + 20.0) / 4, 20.0, 0.0])
        torch.testing.assert_close(table, expected.unsqueeze(1).expand(5, 2))
        expected = torch.tensor([0.0, 1.0, (3 * 1.0 + 2.0) / 4, 2.0, 0.0])
        torch.testing.assert_close(state, expected.unsqueeze(1).expand(5, 2))
    assert all(torch.equal(a, b) for a, b in zip(out[0], out[1], strict=True))
