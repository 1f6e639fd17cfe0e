"""The replay buffer: a uniform reservoir, mixed into updates, kept in checkpoints."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from fakes import ListSink, ListSource, run_until

from stream_trainer.config import parse_settings
from stream_trainer.learner import Learner
from stream_trainer.learner.replay import ReplayBuffer
from stream_trainer.models.forecast import TickModel
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.producers import make_generator


def rows(start: int, n: int):
    ids = np.arange(start, start + n)
    return {"id": ids.astype(np.int64), "x": np.stack([ids, -ids], 1).astype(np.float32)}, (
        ids.astype(np.float32)
    )


def test_reservoir_keeps_a_uniform_sample_of_everything_seen():
    buf = ReplayBuffer(capacity=1000, fraction=1.0)
    for start in range(0, 20000, 500):
        buf.add(*rows(start, 500))
    assert len(buf) == 1000 and buf.seen == 20000
    kept = buf.inputs["id"]
    assert len(set(kept.tolist())) == 1000  # no row twice
    np.testing.assert_array_equal(buf.inputs["x"][:, 0], kept)  # rows stay whole
    np.testing.assert_array_equal(buf.targets, kept.astype(np.float32))
    # uniform over the stream: each quarter holds about a quarter of the buffer
    quarters = np.bincount(kept // 5000, minlength=4)
    assert all(180 < q < 320 for q in quarters), quarters


def test_sample_size_follows_the_fraction_and_is_empty_at_first():
    buf = ReplayBuffer(capacity=100, fraction=0.25)
    assert buf.sample(64) is None
    buf.add(*rows(0, 10))
    inputs, targets = buf.sample(64)
    assert targets.shape == (10,) and inputs["x"].shape == (10, 2)  # capped by what it holds
    buf.add(*rows(10, 200))
    assert buf.sample(64)[1].shape == (16,)


def test_state_round_trip_draws_the_same_afterwards():
    a = ReplayBuffer(capacity=300, fraction=0.5, seed=3)
    for start in range(0, 2000, 100):
        a.add(*rows(start, 100))
    b = ReplayBuffer(capacity=300, fraction=0.5, seed=3)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    for start in range(2000, 2500, 100):
        a.add(*rows(start, 100))
        b.add(*rows(start, 100))
        np.testing.assert_array_equal(a.sample(100)[1], b.sample(100)[1])
    np.testing.assert_array_equal(a.targets, b.targets)


def test_a_change_of_shapes_starts_the_buffer_over():
    buf = ReplayBuffer(capacity=50)
    buf.add(*rows(0, 40))
    buf.add({"id": np.arange(5), "x": np.zeros((5, 3), np.float32)}, np.zeros(5, np.float32))
    assert len(buf) == 5 and buf.inputs["x"].shape[1:] == (3,)
    with pytest.raises(ValueError):
        ReplayBuffer(capacity=0)


def test_replayed_rows_join_the_update_but_not_the_scores():
    torch.manual_seed(0)
    a = Learner(TickModel(4, 1, 8), "regression", lr=0.05)
    torch.manual_seed(0)
    b = Learner(TickModel(4, 1, 8), "regression", lr=0.05)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    inputs, y = {"window": x, "symbol": rng.integers(1, 8, 32)}, x[:, -1].copy()
    old = {"window": -x[:8], "symbol": inputs["symbol"][:8]}, -y[:8] * 3
    ra, rb = a.step(inputs, y), b.step(inputs, y, replay=old)
    np.testing.assert_array_equal(ra.losses, rb.losses)  # scored before learning, new rows only
    assert rb.losses.shape == (32,) and rb.outputs.shape == (32,)
    assert not torch.equal(a.model.linear.weight, b.model.linear.weight)  # learned differently


def test_pipeline_replays_and_checkpoints_its_buffer(tmp_path):
    s = parse_settings(
        {
            "checkpoint": {"dir": str(tmp_path), "every_seconds": 60},
            "device": "cpu",
            "pipelines": [
                {
                    "name": "p",
                    "kind": "clicks",
                    "topics": ["t"],
                    "batch": {"max_size": 128, "max_latency_ms": 0},
                    "replay": {"capacity": 2000, "fraction": 0.5},
                }
            ],
        }
    )
    stream = [json.dumps(e).encode() for e in make_generator("clicks", seed=2, count=5000)]
    p = Pipeline(s, s.pipelines[0])
    src, sink = ListSource({("t", 0): stream}, {}, batch=500), ListSink()
    run_until(p, src, sink)
    assert p.counters["trained"] == 5000 and p.replay.seen == 5000 and len(p.replay) == 2000
    restored = Pipeline(s, s.pipelines[0])
    assert restored.restore()
    assert restored.replay.seen == 5000
    for k, v in p.replay.inputs.items():
        np.testing.assert_array_equal(restored.replay.inputs[k], v)
