"""Examples made in an ingest worker (edges/ingest_worker.py, a stateless featurizer) are the
trainer featurizer's own, batch for batch; a failing event is dead-lettered alone."""

from __future__ import annotations

import json
import random

import msgspec
import numpy as np
import pytest
from support import base_config

from stream_trainer.config import parse_settings
from stream_trainer.domains.decoders import batch_decoder
from stream_trainer.edges.ingest import decoded
from stream_trainer.edges.ingest_worker import Polled, _make
from stream_trainer.events import Rejected, reasons
from stream_trainer.features.base import gather
from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.producers import make_generator


def worker_poll(values: list[bytes], featurizer) -> Polled:
    """What a worker sends for these values, through msgpack as over the pipe."""
    msg = Polled(1, offsets=list(range(len(values))), values=values)
    for row, result in enumerate(batch_decoder("clicks")(values)):
        if type(result) is dict:
            msg.events.append(result)
        else:
            msg.events.append(None)
            msg.rejects.append((row, result.reason, result.detail))
    _make(msg, featurizer)
    blob = msgspec.msgpack.encode(msg)
    return msgspec.msgpack.Decoder(Polled).decode(blob)


def click_values(n: int, seed: int) -> list[bytes]:
    events = list(make_generator("clicks", seed=seed, count=n))
    for i, ev in enumerate(events[:: n // 20]):  # odd contexts: floats, bools, none at all
        ev["context"] = {"f": 0.5 * i, "flag": i % 2 == 0, "n": i} if i % 3 else {}
    return [json.dumps(ev).encode() for ev in events]


def assert_same(made, want) -> None:
    assert sorted(made.inputs) == sorted(want.inputs)
    for k, v in want.inputs.items():
        assert made.inputs[k].dtype == v.dtype and made.inputs[k].flags.writeable, k
        np.testing.assert_array_equal(made.inputs[k], v, err_msg=k)
    np.testing.assert_array_equal(made.targets, want.targets)
    np.testing.assert_array_equal(made.index, np.arange(len(want)))


def test_examples_made_in_a_worker_are_the_trainers_batch_for_batch():
    values = click_values(3000, seed=5)
    values[7], values[1500] = b"{oops", b""  # rejected in the worker: no example
    polls = [worker_poll(values[i : i + 1000], ClickFeaturizer()) for i in range(0, 3000, 1000)]
    rows, events = [], []
    for poll in polls:
        for value, result in zip(poll.values, decoded(poll), strict=True):
            if type(result) is tuple:
                rows.append(result)
                events.append(json.loads(value))
            else:
                assert isinstance(result, Rejected)
    assert len(rows) == 2998
    rng = random.Random(3)
    keep = [j for j in range(len(rows)) if rng.random() > 0.1]  # the deduper drops some
    for lo, hi in ((0, 256), (200, 1500), (900, 2700)):  # within a poll, and across
        sel = [j for j in keep if lo <= j < hi]
        assert_same(
            gather([rows[j] for j in sel]), ClickFeaturizer().featurize([events[j] for j in sel])
        )


class FailsOnBad(ClickFeaturizer):
    stateless = True

    def featurize(self, events):
        if any(ev["item_id"] == "bad" for ev in events):
            raise ValueError("no bad items")
        return super().featurize(events)


def test_a_failing_event_is_rejected_alone_and_the_others_are_made():
    events = list(make_generator("clicks", seed=6, count=50))
    events[10]["item_id"] = "bad"
    poll = worker_poll([json.dumps(e).encode() for e in events], FailsOnBad())
    out = decoded(poll)
    assert out[10] == Rejected(reasons.FEATURIZER_ERROR, "ValueError('no bad items')")
    made = [r for r in out if type(r) is tuple]
    assert len(made) == 49
    good = events[:10] + events[11:]
    assert_same(gather(made), ClickFeaturizer().featurize(good))


class DropsOne(ClickFeaturizer):
    stateless = True

    def featurize(self, events):
        fb = super().featurize(events)
        if len(events) < 2:
            return fb
        fb.index = fb.index[1:]
        return fb


def test_a_stateless_featurizer_that_drops_examples_has_them_rejected():
    events = list(make_generator("clicks", seed=7, count=5))
    out = decoded(worker_poll([json.dumps(e).encode() for e in events], DropsOne()))
    assert all(isinstance(r, Rejected) for r in out)
    assert {r.reason for r in out} == {reasons.FEATURIZER_ERROR}
    assert "one per event" in out[0].detail


@pytest.mark.parametrize(
    "pipeline, featurizes",
    [
        ({"kind": "clicks"}, True),
        ({"kind": "clicks", "output_topic": "scores"}, False),  # outputs need the events
        ({"kind": "ticks"}, False),  # per-key state: the trainer's
        ({"kind": "sensors"}, False),
    ],
)
def test_which_pipelines_featurize_in_their_workers(tmp_path, pipeline, featurizes):
    pipelines = [{"name": "p", "topics": ["t"], **pipeline}]
    settings = parse_settings(base_config("localhost:9092", tmp_path, pipelines))
    p = Pipeline(settings, settings.pipelines[0])
    assert (p.worker_featurizer is not None) is featurizes
