from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from support import http_get

from stream_trainer.metrics import Metrics, MetricsServer

REQUIRED = [
    ("stream_trainer_events_consumed_total", {}),
    ("stream_trainer_events_trained_total", {}),
    ("stream_trainer_events_rejected_total", {"reason": "not_json"}),
    ("stream_trainer_updates_total", {}),
    ("stream_trainer_loss", {"window": "batch"}),
    ("stream_trainer_loss", {"window": "smoothed"}),
    ("stream_trainer_drift_detected_total", {"detector": "page_hinkley"}),
    ("stream_trainer_update_seconds_count", {}),
    ("stream_trainer_event_to_update_seconds_count", {}),
    ("stream_trainer_consumer_lag", {"topic": "t", "partition": "0"}),
    ("stream_trainer_checkpoints_total", {}),
    ("stream_trainer_last_checkpoint_timestamp_seconds", {}),
    ("stream_trainer_quality", {"metric": "auc"}),
]


def feed(m: Metrics):
    h = m.pipeline("p")
    h.on_consumed(10)
    h.on_rejected("not_json")
    h.on_seeded(1)
    h.on_batch(
        trained=8,
        batch_loss=0.5,
        smoothed_loss=0.6,
        update_seconds=0.002,
        event_ages=[0.01] * 8,
        lr=0.003,
        model_version=7,
        skipped=None,
    )
    h.on_batch(
        trained=1,
        batch_loss=float("nan"),
        smoothed_loss=0.6,
        update_seconds=0.001,
        event_ages=[0.02],
        lr=0.003,
        model_version=7,
        skipped="non_finite_loss",
    )
    h.on_drift("page_hinkley", 1234.0)
    h.on_checkpoint(0.05, 1000.0)
    h.on_partitions([("t", 0), ("t", 1)])
    h.on_lag("t", 0, 42)
    h.on_lag("t", 1, 3)
    h.on_quality({"log_loss": 0.55, "auc": 0.71})
    return h


def test_names_labels_and_values():
    reg = CollectorRegistry()
    h = feed(Metrics(reg))
    for name, labels in REQUIRED:
        assert reg.get_sample_value(name, {"pipeline": "p", **labels}) is not None, name
    v = reg.get_sample_value
    assert v("stream_trainer_events_consumed_total", {"pipeline": "p"}) == 10
    assert v("stream_trainer_events_trained_total", {"pipeline": "p"}) == 9
    assert v("stream_trainer_updates_total", {"pipeline": "p"}) == 1
    assert (
        v("stream_trainer_updates_skipped_total", {"pipeline": "p", "reason": "non_finite_loss"})
        == 1
    )
    assert v("stream_trainer_event_to_update_seconds_count", {"pipeline": "p"}) == 9
    assert v("stream_trainer_loss", {"pipeline": "p", "window": "smoothed"}) == 0.6
    assert v("stream_trainer_quality", {"pipeline": "p", "metric": "auc"}) == 0.71
    assert v("stream_trainer_last_drift_timestamp_seconds", {"pipeline": "p"}) == 1234.0
    assert v("stream_trainer_consumer_lag", {"pipeline": "p", "topic": "t", "partition": "0"}) == 42
    # rejected reasons that never happened are still exported, as zeros
    assert v("stream_trainer_events_rejected_total", {"pipeline": "p", "reason": "empty"}) == 0
    h.on_partitions([("t", 0)])  # partition 1 revoked: its lag series goes away
    assert (
        v("stream_trainer_consumer_lag", {"pipeline": "p", "topic": "t", "partition": "1"}) is None
    )


def test_http_endpoints():
    reg = CollectorRegistry()
    feed(Metrics(reg))
    state = {"ready": (False, "p: no partitions assigned yet")}
    srv = MetricsServer("127.0.0.1:0", reg, lambda: (True, ""), lambda: state["ready"]).start()
    try:
        base = f"http://{srv.address}"
        code, body = http_get(base + "/metrics")
        assert code == 200 and 'stream_trainer_loss{pipeline="p",window="batch"} 0.5' in body
        assert http_get(base + "/healthz") == (200, "ok\n")
        assert http_get(base + "/readyz") == (503, "p: no partitions assigned yet\n")
        state["ready"] = (True, "")
        assert http_get(base + "/readyz")[0] == 200
        assert http_get(base + "/nope")[0] == 404
    finally:
        srv.stop()


def test_address_in_use_is_a_clear_error():
    from stream_trainer.errors import StreamTrainerError

    a = MetricsServer("127.0.0.1:0", CollectorRegistry(), lambda: (True, ""), lambda: (True, ""))
    try:
        with pytest.raises(StreamTrainerError, match="cannot serve metrics on"):
            MetricsServer(a.address, CollectorRegistry(), lambda: (True, ""), lambda: (True, ""))
    finally:
        a.stop()


def test_batch_observation_equals_one_value_at_a_time():
    """The freshness histogram takes a batch's ages at once: the same exposition as
    observing them one by one, bounds themselves included."""
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from stream_trainer.metrics.container import _LATENCY_BUCKETS, observe_many

    rng = np.random.default_rng(0)
    ages = np.concatenate([rng.exponential(0.5, 5000), np.asarray(_LATENCY_BUCKETS), [0.0, 99.0]])
    one, many = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("age", "a", ["p"], registry=one, buckets=_LATENCY_BUCKETS).labels("x")
    h2 = Histogram("age", "a", ["p"], registry=many, buckets=_LATENCY_BUCKETS).labels("x")
    for a in ages.tolist():
        h1.observe(a)
    for part in np.array_split(ages, 7):
        observe_many(h2, part)
    observe_many(h2, [])

    def lines(r):  # (the _created timestamps differ)
        return [x for x in generate_latest(r).decode().splitlines() if "_created" not in x]

    buckets = [x for x in lines(one) if "_bucket" in x or "_count" in x]
    assert buckets == [x for x in lines(many) if "_bucket" in x or "_count" in x]
    s1, s2 = (
        one.get_sample_value("age_sum", {"p": "x"}),
        many.get_sample_value("age_sum", {"p": "x"}),
    )
    assert abs(s1 - s2) < 1e-9 * s1
