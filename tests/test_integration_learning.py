"""The daemon learns from real Kafka topics, test-then-train, better than trivial baselines.

One daemon runs the three built-in pipelines against the real local broker; each
pipeline publishes its per-event prequential predictions to an output topic, and
the baselines are computed here, independently, from the events we produced.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import numpy as np
import pytest
from support import Daemon, base_config, consume_all, produce, sample

from stream_trainer.edges.admin import create_topics
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration

N = 20_000
LAST = 5_000
CHANNELS = ("temp", "humidity", "pressure")


def _outputs(bootstrap: str, topic: str, expected: int) -> dict[float, dict]:
    recs = consume_all(bootstrap, topic, expected)
    docs = [json.loads(r.value) for r in recs]
    assert len(docs) == expected, f"{topic}: {len(docs)} outputs, expected {expected}"
    by_ts = {d["ts"]: d for d in docs}
    assert len(by_ts) == expected, "one output per trained event"
    return by_ts


def test_three_pipelines_learn_better_than_baselines(broker, topic, workdir, metrics_port):
    bs = broker.bootstrap
    streams = {
        "clicks": list(make_generator("clicks", seed=11, count=N)),
        "ticks": list(make_generator("ticks", seed=12, count=N)),
        "sensors": list(make_generator("sensors", seed=13, count=N)),
    }
    keys = {"clicks": "user_id", "ticks": "symbol", "sensors": "sensor_id"}
    topics = {k: f"{topic}-{k}" for k in streams}
    create_topics(bs, {t: 2 for t in topics.values()})
    for kind, events in streams.items():
        produce(bs, topics[kind], events, key_field=keys[kind])

    pipelines = [
        {
            "name": kind,
            "kind": kind,
            "topics": [topics[kind]],
            "output_topic": f"{topics[kind]}.out",
            "outputs": "all",  # every trained event's record (sensors: not only anomalies)
        }
        for kind in streams
    ]
    daemon = Daemon(base_config(bs, workdir / "ckpt", pipelines), workdir, metrics_port).start()
    n_symbols = len({e["symbol"] for e in streams["ticks"]})
    n_sensors = len({e["sensor_id"] for e in streams["sensors"]})
    # A key's first two events only seed its state (a price and a first return; or the
    # first two readings behind a running mean/std).
    expected_trained = {"clicks": N, "ticks": N - 2 * n_symbols, "sensors": N - 2 * n_sensors}

    def done(m: dict) -> bool:
        return all(
            sample(m, "stream_trainer_events_trained_total", pipeline=k) == v
            for k, v in expected_trained.items()
        )

    def caught_up(m: dict) -> bool:  # lag from the consumer's high watermarks
        return all(
            sample(m, "stream_trainer_consumer_lag", pipeline=k, topic=topics[k], partition=str(p))
            == 0
            for k in streams
            for p in (0, 1)
        )

    try:
        daemon.wait_for(done, timeout_s=180, what="all events trained")
        m = daemon.wait_for(caught_up, timeout_s=30, what="lag 0 on every partition")
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log()[-2000:]
    for kind, trained in expected_trained.items():
        assert sample(m, "stream_trainer_events_consumed_total", pipeline=kind) == N
        assert sample(m, "stream_trainer_events_seeded_total", pipeline=kind) == N - trained
        assert (
            sample(m, "stream_trainer_events_rejected_total", pipeline=kind, reason="not_json") == 0
        )
        assert sample(m, "stream_trainer_updates_total", pipeline=kind) > 0
        assert sample(m, "stream_trainer_checkpoints_total", pipeline=kind) >= 1
        assert math.isfinite(sample(m, "stream_trainer_loss", pipeline=kind, window="smoothed"))
        assert sample(m, "stream_trainer_event_to_update_seconds_count", pipeline=kind) == trained
    # prequential quality per domain, over the last 10k examples
    assert 0.55 < sample(m, "stream_trainer_quality", pipeline="clicks", metric="auc") < 1
    gap = sample(m, "stream_trainer_quality", pipeline="clicks", metric="calibration_gap")
    assert abs(gap) < 0.05
    q = sample(m, "stream_trainer_quality", pipeline="ticks", metric="directional_accuracy")
    assert 0.55 < q <= 1
    assert 0 <= sample(m, "stream_trainer_quality", pipeline="sensors", metric="anomaly_rate") < 0.1
    assert sample(m, "stream_trainer_quality", pipeline="sensors", metric="mse") > 0

    # clicks: log loss over the last 5,000 events vs the best constant click rate for them
    out = _outputs(bs, f"{topics['clicks']}.out", expected_trained["clicks"])
    last = streams["clicks"][-LAST:]
    y = np.array([e["label"] for e in last], float)
    p = np.clip([out[e["ts"]]["prediction"] for e in last], 1e-7, 1 - 1e-7)
    model_ll = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    rate = y.mean()
    base_ll = float(-(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)))
    print(f"clicks, last {LAST}: log loss {model_ll:.4f} vs constant rate {base_ll:.4f}")
    assert model_ll < base_ll, (model_ll, base_ll)

    # ticks: MSE of the forecast next log return vs predicting zero return
    out = _outputs(bs, f"{topics['ticks']}.out", expected_trained["ticks"])
    prev: dict[str, float] = {}
    model_se, zero_se = [], []
    for i, e in enumerate(streams["ticks"]):
        if e["symbol"] in prev and i >= N - LAST and e["ts"] in out:
            r = math.log(e["price"] / prev[e["symbol"]])
            model_se.append((out[e["ts"]]["prediction"] - r) ** 2)
            zero_se.append(r * r)
        prev[e["symbol"]] = e["price"]
    assert len(model_se) > LAST * 0.99
    print(f"ticks, last {LAST}: MSE {np.mean(model_se):.3e} vs zero return {np.mean(zero_se):.3e}")
    assert np.mean(model_se) < np.mean(zero_se), (np.mean(model_se), np.mean(zero_se))

    # sensors: MSE of the forecast reading vs the last value of the same sensor
    out = _outputs(bs, f"{topics['sensors']}.out", expected_trained["sensors"])
    last_value: dict[str, np.ndarray] = {}
    model_se, persist_se = [], []
    scores = []
    for i, e in enumerate(streams["sensors"]):
        x = np.array([e["values"][c] for c in CHANNELS])
        if e["sensor_id"] in last_value and i >= N - LAST and e["ts"] in out:
            doc = out[e["ts"]]
            model_se.append(np.mean((np.array(doc["prediction"]) - x) ** 2))
            persist_se.append(np.mean((last_value[e["sensor_id"]] - x) ** 2))
            scores.append(doc["anomaly_score"])
        last_value[e["sensor_id"]] = x
    assert len(model_se) > LAST * 0.99
    print(
        f"sensors, last {LAST}: MSE {np.mean(model_se):.3f} vs last value {np.mean(persist_se):.3f}"
    )
    assert np.mean(model_se) < np.mean(persist_se), (np.mean(model_se), np.mean(persist_se))
    assert all(s >= 0 and math.isfinite(s) for s in scores)


def test_anomaly_scores_flag_injected_spikes(broker, topic, workdir, metrics_port):
    """The sensors pipeline publishes scores to its default output topic (every score, with
    ``outputs: all``); spikes score high."""
    bs = broker.bootstrap
    events = list(make_generator("sensors", seed=5, count=6000, anomaly_rate=0.0))
    spiked = set(range(3000, 6000, 250))
    for i in spiked:
        events[i]["values"]["temp"] += 40.0
    create_topics(bs, {topic: 1})
    produce(bs, topic, events, key_field="sensor_id")
    cfg = base_config(
        bs, workdir / "ckpt",
        [{"name": "sensors", "kind": "sensors", "topics": [topic], "outputs": "all"}],
    )  # fmt: skip
    daemon = Daemon(cfg, workdir, metrics_port).start()
    try:
        daemon.wait_for(
            lambda m: (
                sample(m, "stream_trainer_events_trained_total", pipeline="sensors") == 6000 - 40
            ),
            what="trained",
        )
    finally:
        assert daemon.terminate() == 0
    docs = {
        json.loads(r.value)["ts"]: json.loads(r.value)
        for r in consume_all(bs, f"{topic}.anomalies", 6000 - 40)
    }
    flagged = {i for i, e in enumerate(events) if docs.get(e["ts"], {}).get("anomaly")}
    assert spiked <= flagged, sorted(spiked - flagged)
    normal = defaultdict(list)
    for i, e in enumerate(events[3000:], start=3000):
        if i not in spiked and e["ts"] in docs:
            normal["s"].append(docs[e["ts"]]["anomaly_score"])
    assert np.median(normal["s"]) < 1.5
