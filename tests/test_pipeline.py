"""The pipeline loop against fakes: offsets, checkpoints before commits, exact resume."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from fakes import ListSink, ListSource, run_until

from stream_trainer.config import parse_settings
from stream_trainer.errors import CheckpointError, ConfigError, StreamTrainerError
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.producers import make_generator


def settings(tmp_path, every_seconds=0.001, **pipeline):
    spec = {
        "name": "p",
        "kind": "clicks",
        "topics": ["t"],
        "output_topic": "t.out",
        "batch": {"max_size": 64, "max_latency_ms": 0},
        **pipeline,
    }
    return parse_settings(
        {
            "checkpoint": {"dir": str(tmp_path), "every_seconds": every_seconds},
            "device": "cpu",
            "pipelines": [spec],
        }
    )


def plugin_settings(tmp_path, **pipeline):
    """The tests' own featurizer and model (tests/plugin_example.py), by import path."""
    return settings(
        tmp_path,
        kind="custom",
        model="plugin_example:build",
        featurizer="plugin_example:MeanFeaturizer",
        output_topic=None,
        **pipeline,
    )


def click_stream(n: int, seed: int = 0) -> list[bytes]:
    return [json.dumps(e).encode() for e in make_generator("clicks", seed=seed, count=n)]


def test_everything_is_trained_once_and_commits_follow_checkpoints(tmp_path):
    s = settings(tmp_path)
    p = Pipeline(s, s.pipelines[0])
    data = {("t", 0): click_stream(500, 1), ("t", 1): click_stream(300, 2)}

    def on_commit(offsets):  # a commit must never run ahead of the newest checkpoint
        newest = p.store.load_latest()
        assert newest is not None
        assert all(newest["offsets"][f"{t}:{q}"] >= o for (t, q), o in offsets.items())

    src, sink = ListSource(data, {}, on_commit=on_commit), ListSink()
    run_until(p, src, sink)
    assert p.counters["trained"] == 800 and p.counters["rejected"] == 0
    assert p.next_offsets == {("t", 0): 500, ("t", 1): 300}
    assert src.commits and src.commits[-1] == {("t", 0): 500, ("t", 1): 300}
    offs = sorted((d["partition"], d["offset"]) for _, d in sink.outputs)
    assert offs == [(0, i) for i in range(500)] + [(1, i) for i in range(300)]
    for a, b in zip(src.commits, src.commits[1:], strict=False):  # offsets only increase
        assert all(b[k] >= v for k, v in a.items())


def test_abort_and_resume_replays_exactly_the_unsaved_tail(tmp_path):
    s = settings(tmp_path)
    data = {("t", 0): click_stream(1000, 3)}
    first = Pipeline(s, s.pipelines[0])
    src1, sink1 = ListSource(data, {}, batch=100), ListSink()
    run_until(first, src1, sink1, stop_after_polls=4)  # stops mid-stream, checkpoints
    saved = first.store.load_latest()
    assert saved["offsets"] == {"t:0": 400} and saved["counters"]["trained"] == 400

    second = Pipeline(s, s.pipelines[0])
    assert second.restore()
    assert second.resume_offsets() == {("t", 0): 400}
    for k, v in first.learner.model.state_dict().items():  # the model came back as saved
        assert torch.equal(v, second.learner.model.state_dict()[k])
    src2, sink2 = ListSource(data, second.resume_offsets(), batch=100), ListSink()
    run_until(second, src2, sink2)
    seen = [d["offset"] for _, d in sink1.outputs + sink2.outputs]
    assert sorted(seen) == list(range(1000))  # nothing skipped, nothing twice
    assert second.counters["trained"] == 1000


def test_a_crash_loses_only_what_the_checkpoint_did_not_hold(tmp_path):
    """No final checkpoint (a crash): the restart replays from the last durable one."""
    s = settings(tmp_path)
    data = {("t", 0): click_stream(600, 4)}
    p = Pipeline(s, s.pipelines[0])
    src = ListSource(data, {}, batch=100)
    p.source, p.sink = src, ListSink()
    p.handle(src.poll(0))
    p.flush()
    p.checkpoint()  # durable at 100
    p.handle(src.poll(0))
    p.flush()  # trained up to 200, then "crash": no checkpoint
    restarted = Pipeline(s, s.pipelines[0])
    restarted.restore()
    assert restarted.resume_offsets() == {("t", 0): 100}
    assert restarted.counters["trained"] == 100


def trained_on_a_poll(tmp_path, stream: list[bytes]) -> tuple[Pipeline, ListSource]:
    """A pipeline on one partition of ``stream`` that has trained its first poll (100)."""
    s = settings(tmp_path)
    p = Pipeline(s, s.pipelines[0])
    src = ListSource({("t", 0): stream}, {}, batch=100)
    p.source, p.sink = src, ListSink()
    p.handle(src.poll(0))
    p.flush()
    return p, src


def test_the_periodic_checkpoint_is_written_beside_training_and_committed_once_durable(
    tmp_path,
):
    """The loop's checkpoint copies the state, writes it on a thread and commits its
    offsets after the file is durable: training that goes on meanwhile is in neither."""
    p, src = trained_on_a_poll(tmp_path, click_stream(300, 8))
    weights = {k: v.clone() for k, v in p.learner.model.state_dict().items()}
    gate = threading.Event()
    save = p.store.save
    p.store.save = lambda doc: (gate.wait(10), save(doc))[1]  # a slow disk
    assert p.periodic_checkpoint()
    p.handle(src.poll(0))  # training goes on while the file is written
    p.flush()
    p.collect_checkpoint()
    assert src.commits == [] and p.store.load_latest() is None  # not durable: no commit
    writing = p._writing
    assert p.periodic_checkpoint() and p._writing is writing  # the next waits, training not
    gate.set()
    p.collect_checkpoint(wait=True)
    assert src.commits == [{("t", 0): 100}]
    saved = p.store.load_latest()
    assert saved["offsets"] == {"t:0": 100} and saved["counters"]["trained"] == 100
    for k, v in saved["learner"]["model"].items():  # the weights of the copy, not later ones
        assert torch.equal(v, weights[k]), k
    assert p.offsets.dirty  # what was trained meanwhile waits for the next checkpoint
    assert p.checkpoint() and src.commits[-1] == {("t", 0): 200}


def test_a_periodic_checkpoint_that_cannot_be_written_is_taken_again(tmp_path):
    p, src = trained_on_a_poll(tmp_path, click_stream(100, 9))
    save, calls = p.store.save, []

    def flaky(doc):
        calls.append(1)
        if len(calls) == 1:
            raise CheckpointError("disk full")
        return save(doc)

    p.store.save = flaky
    assert p.periodic_checkpoint()
    p.collect_checkpoint(wait=True)
    assert src.commits == [] and p.offsets.dirty  # postponed, nothing committed
    assert p.periodic_checkpoint()
    p.collect_checkpoint(wait=True)
    assert src.commits == [{("t", 0): 100}] and not p.offsets.dirty


def test_bad_events_go_to_dead_letters_and_never_stop_training(tmp_path):
    s = settings(tmp_path)
    good = click_stream(200, 5)
    bad = [b"", b"nope", b"[]", b'{"ts": NaN}', b"\xff"]
    stream = good[:100] + bad + good[100:]
    p = Pipeline(s, s.pipelines[0])
    src, sink = ListSource({("t", 0): stream}, {}), ListSink()
    run_until(p, src, sink)
    assert p.counters["trained"] == 200 and p.counters["rejected"] == 5
    assert [d["reason"] for d in sink.dead] == [
        "empty",
        "not_json",
        "not_object",
        "non_finite",
        "invalid_utf8",
    ]
    assert [d["raw"] for d in sink.dead] == bad and all(d["topic"] == "t.dlq" for d in sink.dead)
    assert p.next_offsets == {("t", 0): 205}


class Recorder(PipelineHooks):
    def __init__(self) -> None:
        self.drifts, self.batches, self.skipped = 0, 0, []

    def on_batch(self, **kw) -> None:
        self.batches += 1
        if kw["skipped"]:
            self.skipped.append(kw["skipped"])

    def on_drift(self, detector: str, timestamp: float) -> None:
        self.drifts += 1


def test_drift_triggers_the_configured_actions(tmp_path):
    s = settings(
        tmp_path,
        every_seconds=60,
        output_topic=None,
        drift={
            "detector": "page_hinkley",
            "boost_factor": 5.0,
            "actions": ["reset_optimizer", "boost_lr"],
        },
    )
    hooks = Recorder()
    p = Pipeline(s, s.pipelines[0], hooks=hooks)
    stream = [
        json.dumps(e).encode()
        for e in make_generator("clicks", seed=6, count=80_000, drift_at=50_000)
    ]
    src, sink = ListSource({("t", 0): stream}, {}, batch=256), ListSink()
    run_until(p, src, sink)
    assert hooks.drifts >= 1 and p.summary()["drifts"] == hooks.drifts
    assert p.monitor.detections == hooks.drifts
    # boost_lr: the boost decays back over boost_updates (200) updates after the last drift
    assert p.learner.lr_multiplier == pytest.approx(1.0 + 4.0 * p.policy.boost_left / 200)


def test_custom_plugin_pipeline(tmp_path):
    s = plugin_settings(tmp_path, optimizer={"lr": 0.2})
    p = Pipeline(s, s.pipelines[0])
    rng = np.random.default_rng(0)
    stream = [
        json.dumps({"x": float(x), "y": 3 * float(x) + 1}).encode() for x in rng.normal(size=4000)
    ]
    src, sink = ListSource({("t", 0): stream}, {}), ListSink()
    run_until(p, src, sink)
    assert p.counters["trained"] == 4000
    pred = p.learner.predict({"x": np.array([[0.0], [1.0]], np.float32)})
    np.testing.assert_allclose(pred, [1.0, 4.0], atol=0.3)  # learned y = 3x + 1
    assert p.featurizer.seen == 4000


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    s = settings(tmp_path, kind="ticks", output_topic=None)
    p = Pipeline(s, s.pipelines[0])
    ticks = [json.dumps(e).encode() for e in make_generator("ticks", count=200)]
    run_until(p, ListSource({("t", 0): ticks}, {}), ListSink())
    # another kind: one clear error (a new featurizer window of the same kind races the
    # restored model instead: tests/test_reshape.py)
    s2 = settings(tmp_path, kind="sensors", output_topic=None)
    with pytest.raises(StreamTrainerError, match="kind 'ticks'.*config says 'sensors'"):
        Pipeline(s2, s2.pipelines[0]).restore()
    s3 = settings(tmp_path, kind="ticks", output_topic=None, featurizer={"window": 4})
    q = Pipeline(s3, s3.pipelines[0])
    assert q.restore() and q.reshape is not None and q.reshape.race.active


def test_batches_that_explode_are_skipped_or_clipped_and_counted(tmp_path):
    """A user featurizer lets extreme values through: the guards keep the weights finite."""
    from prometheus_client import CollectorRegistry

    from stream_trainer.metrics import Metrics

    reg = CollectorRegistry()
    s = plugin_settings(tmp_path, batch={"max_size": 10, "max_latency_ms": 0})
    p = Pipeline(s, s.pipelines[0], hooks=Metrics(reg).pipeline("p"))
    normal = [json.dumps({"x": i / 10, "y": i / 5}).encode() for i in range(10)]
    overflow = [json.dumps({"x": 1e30, "y": i}).encode() for i in range(10)]  # loss = inf
    huge = [json.dumps({"x": 1e4, "y": -1e4 - i}).encode() for i in range(10)]  # huge gradient
    again = [json.dumps({"x": i / 10, "y": i / 5 + 0.01}).encode() for i in range(10)]
    src, sink = ListSource({("t", 0): normal + overflow + huge + again}, {}, batch=10), ListSink()
    p.source, p.sink = src, sink
    weights = []
    for _ in range(4):
        p.handle(src.poll(0))
        p.pump()
        weights.append({k: v.clone() for k, v in p.learner.model.state_dict().items()})
    v = reg.get_sample_value
    assert (
        v("stream_trainer_updates_skipped_total", {"pipeline": "p", "reason": "non_finite_loss"})
        == 1
    )
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # untouched
    assert v("stream_trainer_updates_clipped_total", {"pipeline": "p"}) >= 1
    for w in weights:
        assert all(torch.isfinite(t).all() for t in w.values())
    assert v("stream_trainer_updates_total", {"pipeline": "p"}) == 3
    assert p.counters["trained"] == 40  # scored, even when the update was refused


def test_after_an_offset_reset_the_new_log_trains_even_where_its_bytes_repeat(tmp_path, caplog):
    """A broker that lost its data and receives the same events again (a seeded producer
    restarted): the partition's duplicate window is forgotten with its old log, so the new
    log trains; the same bytes again *within* one log are still refused."""
    s = settings(tmp_path, every_seconds=3600)
    p = Pipeline(s, s.pipelines[0])
    events = click_stream(300, 3)
    first = ListSource({("t", 0): events}, {})
    run_until(p, first, ListSink())
    assert p.counters["trained"] == 300 and p.counters["rejected"] == 0
    again = ListSource({("t", 0): events + events[:100]}, {})  # offsets restart at 0
    p.polled_next[("t", 0)] = 300  # what the consumer last handed us from the old log
    sink = ListSink()
    run_until(p, again, sink)
    assert p.counters["offset_resets"] == 1
    assert p.counters["trained"] == 600  # the new log's 300 events, learned
    assert p.counters["rejected"] == 100  # its own repeats, refused
    assert {d["reason"] for d in sink.dead} == {"duplicate"}


def test_a_pipeline_that_rejects_most_events_says_so_with_the_reason(tmp_path, caplog):
    s = settings(tmp_path, every_seconds=3600)
    # a frozen clock: the loop's own once-a-second check must not split the window,
    # however slowly this machine runs the 2,400 events
    p = Pipeline(s, s.pipelines[0], clock=lambda: 0.0)
    events = click_stream(1200, 4)
    run_until(p, ListSource({("t", 0): events + events}, {}), ListSink())
    with caplog.at_level("WARNING", logger="stream_trainer.pipeline.core"):
        p.every_second(now=100.0)
    (rec,) = [r for r in caplog.records if "most recent events rejected" in r.getMessage()]
    assert "50%, mostly duplicate" in rec.getMessage()
    assert rec.reasons == "duplicate=1200" and "replaying" in rec.hint
    caplog.clear()
    p.every_second(now=101.0)  # nothing new consumed: no second warning
    assert not [r for r in caplog.records if "most recent events rejected" in r.getMessage()]


@pytest.mark.parametrize("outputs", [None, "all"])
def test_sensors_publish_their_anomalies_unless_asked_for_every_score(tmp_path, outputs):
    """By default a sensors pipeline's output topic carries the readings it flags (its
    name says anomalies); ``outputs: all`` publishes every trained reading's score."""
    events = list(make_generator("sensors", seed=5, count=3000, anomaly_rate=0.0))
    for i in range(1500, 3000, 150):
        events[i]["values"]["temp"] += 40.0  # spikes
    extra = {} if outputs is None else {"outputs": outputs}
    s = settings(tmp_path, kind="sensors", output_topic=None, **extra)
    p = Pipeline(s, s.pipelines[0])
    hooks = p.hooks = _Anomalies()
    src, sink = ListSource({("t", 0): [json.dumps(e).encode() for e in events]}, {}), ListSink()
    run_until(p, src, sink)
    trained = p.counters["trained"]
    assert trained == 3000 - 2 * 20
    assert {t for t, _ in sink.outputs} == {"t.anomalies"}
    flagged = [d for _, d in sink.outputs if d["anomaly"]]
    assert len(flagged) == hooks.anomalies >= 10  # the metric counts them either way
    if outputs is None:
        assert len(sink.outputs) == len(flagged)
    else:
        assert len(sink.outputs) == trained


class _Anomalies(PipelineHooks):
    anomalies = 0

    def on_anomalies(self, n: int) -> None:
        self.anomalies += n


def test_outputs_flagged_needs_a_kind_that_flags(tmp_path):
    with pytest.raises(ConfigError, match="outputs: flagged needs a kind whose featurizer flags"):
        settings(tmp_path, outputs="flagged")


def test_batches_grow_under_a_long_backlog_or_a_growing_lag_until_caught_up(tmp_path):
    """Large batches from a lag above ``backlog_lag`` until the lag is down to a few
    small batches; a growing lag doubles them; a short backlog that shrinks keeps the
    small batches."""
    s = settings(tmp_path, batch={"max_size": 256, "backlog_max_size": 1024})
    p = Pipeline(s, s.pipelines[0])

    def sizes(lags):  # each scenario from a pipeline that just started
        p._last_lag, p._growing, p.batcher.max_size, out = None, 0, 256, []
        for lag in lags:
            p._fit_batches(lag)
            out.append(p.batcher.max_size)
        return out

    # a long backlog: large until caught up (4 x 256)
    assert sizes([0, 60_000, 30_000, 5_000, 1_024, 900]) == [256, 1024, 1024, 1024, 256, 256]
    # a short backlog, shrinking every second: small throughout
    assert sizes([20_000, 12_000, 5_000, 800]) == [256, 256, 256, 256]
    # a burst (one jump) keeps them small too
    assert sizes([900, 20_000, 12_000, 3_000]) == [256, 256, 256, 256]
    # falling behind a fast stream (growing two seconds in a row): 512, 1024, there
    # until caught up
    assert sizes([500, 2_000, 3_000, 5_000, 4_000, 9_000, 3_000, 500]) == [
        256, 256, 512, 1024, 1024, 1024, 1024, 256,
    ]  # fmt: skip
