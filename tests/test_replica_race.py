"""The challenger race on two replicas (gloo on loopback, records fed in-process): the
race is pooled over both, rank 0 decides, and both apply its verdict in one round."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stream_trainer.config import parse_settings
from stream_trainer.distributed import Replicas, World, fingerprint
from stream_trainer.pipeline.hooks import NullHooks
from stream_trainer.pipeline.ports import Record
from stream_trainer.producers import make_generator

BATCH = 64


class Outcomes(NullHooks):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_challenger(self, outcome: str) -> None:
        self.seen.append(outcome)


def _settings(ckpt: str, mode: str):
    return parse_settings(
        {
            "checkpoint": {"dir": ckpt, "every_seconds": 1e9},
            "device": "cpu",
            "pipelines": [
                {
                    "name": "p",
                    "kind": "clicks",
                    "topics": ["t"],
                    "featurizer": {"id_buckets": 4096, "pair_buckets": 4096},
                    "model": {"dim": 8, "hidden": 16},
                    "batch": {"max_size": BATCH, "max_latency_ms": 0},
                    "drift": {
                        "detector": "none",  # the test says when the drift is
                        "actions": ["challenger"],
                        "challenger_window": 256,
                        "challenger_margin": 0.0,
                        "challenger_patience": 100_000,
                    },
                    "replay": {"capacity": 512},
                    # rounds every 4 steps or 20 ms: the records come in back to back,
                    # so without every_ms the first agreed time (every_ms after the
                    # start) would come after the last of them
                    "sync": {"mode": mode, "every_steps": 4, "every_ms": 20, "check_every": 1},
                }
            ],
        }
    )


def _records(rank: int) -> list[list[Record]]:
    """Rank's partition: 1,536 events, then 1,536 whose labels are flipped (a concept
    the champion learned the opposite of; a fresh challenger wins it)."""
    events = list(make_generator("clicks", seed=20 + rank, count=3072))
    for e in events[1536:]:
        e["label"] = 1 - e["label"]
    recs = [Record("t", rank, i, 0, None, json.dumps(e).encode()) for i, e in enumerate(events)]
    return [recs[i : i + BATCH] for i in range(0, len(recs), BATCH)]


def _worker(rank: int, port: int, out: dict, mode: str, ckpt: str) -> None:
    from stream_trainer.pipeline.replicated import ReplicatedPipeline

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        s = _settings(ckpt, mode)
        hooks = Outcomes()
        p = ReplicatedPipeline(s, s.pipelines[0], hooks=hooks)
        p.attach(Replicas(World(rank=rank, size=2), "p", torch.device("cpu"), stall_timeout_s=60))
        drawn = []  # rows the replay buffer mixed into this replica's steps
        sample = p.replay.sample

        def counted(n):
            got = sample(n)
            drawn.append(0 if got is None else len(got[1]))
            return got

        p.replay.sample = counted
        chunks = _records(rank)
        at_promotion = None

        def after_round() -> None:  # the weights as the round that promoted left them
            nonlocal at_promotion
            if at_promotion is None and p.race.promotions:
                at_promotion = (p._rounds, fingerprint(p.learner.sync_tensors(True)))

        pump_until = p._pump_until

        def pumped(deadline, caught_up):  # average: a round, then the local steps until
            after_round()  # the next one, within the same step() call
            return pump_until(deadline, caught_up)

        p._pump_until = pumped
        for k, chunk in enumerate(chunks):
            if k == len(chunks) // 2 and rank == 1:
                p.drift_detected()  # seen by one replica; every replica acts on it
            if not p.step(chunk, False):  # the other stopped first (average mode's
                break  # rounds do not pair step for step)
            if mode == "allreduce":  # (a step is a round)
                after_round()
        else:
            assert not p.step([], True)  # the stop round (and the final checkpoint)
        out[rank] = {
            "outcomes": hooks.seen,
            "at_promotion": at_promotion,
            "final": fingerprint(p.learner.sync_tensors(True)),
            "updates": p.learner.updates,
            "replayed": sum(drawn),
            "buffered": p.replay.seen,
            "trained": p.counters["trained"],
            "sparse": p.learner.sparse_sync,
        }
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["allreduce", "average"])
def test_a_promotion_on_two_replicas_leaves_identical_weights_on_both(mode, tmp_path):
    from stream_trainer.local.broker import free_port

    out = mp.Manager().dict()
    mp.start_processes(
        _worker,
        args=(free_port(), out, mode, str(tmp_path)),
        nprocs=2,
        start_method="spawn",
    )
    a, b = out[0], out[1]
    assert a["outcomes"] == b["outcomes"] == ["promoted"]
    # promoted in the same round on both, the new champion bitwise equal (weights and
    # optimizer state), and still equal at the end
    assert a["at_promotion"] is not None
    assert a["at_promotion"] == b["at_promotion"]
    assert a["final"] == b["final"]
    # replay mixed each replica's own past examples into its steps: its buffer took exactly
    # the rows it trained (its own partition's), and it drew rows from it
    for r in (a, b):
        assert r["replayed"] > 0 and r["buffered"] == r["trained"] > 0
        assert r["sparse"]  # the embeddings synced as rows (the default)
