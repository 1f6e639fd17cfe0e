"""The daemon serves while it trains (real broker): POST /predict, requests_topic ->
predictions_topic with the request's key, a joined (delayed-label) pipeline's counters."""

from __future__ import annotations

import http.client
import json

import pytest
from support import Daemon, base_config, consume_all, produce, sample

from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import free_port
from stream_trainer.producers import make_generator
from stream_trainer.producers.delayed import IMPRESSION, delayed_labels

pytestmark = pytest.mark.integration


def test_serving_and_delayed_labels_end_to_end(broker, topic, workdir, metrics_port):
    bs = broker.bootstrap
    labels, requests = f"{topic}.labels", f"{topic}.requests"
    create_topics(bs, {topic: 2, labels: 2, requests: 2})
    serve = f"127.0.0.1:{free_port()}"
    pipe = {"name": "clicks", "kind": "clicks", "topics": [topic], "requests_topic": requests,
            "labels": {"topic": labels, "window_s": 60}}  # fmt: skip
    cfg = base_config(bs, workdir / "ckpt", [pipe], serving={"address": serve})
    stream = list(delayed_labels(make_generator("clicks", seed=3, count=6000), max_delay_s=30))
    imps = [d for k, d in stream if k == IMPRESSION]
    labs = [d for k, d in stream if k != IMPRESSION]
    d = Daemon(cfg, workdir, metrics_port, env={"STREAM_TRAINER_SERVING_TOKEN": "tok"}).start()
    try:
        d.wait_assigned("clicks", 4)
        produce(bs, topic, imps, key_field="user_id")
        produce(bs, labels, labs, key_field="request_id")
        name = "stream_trainer_impressions_resolved_total"
        outcomes = ("labelled", "negative", "dropped")

        def resolved(m):
            return sum(sample(m, name, pipeline="clicks", outcome=o) or 0 for o in outcomes)

        def caught_up(m):
            lags = [sample(m, "stream_trainer_consumer_lag", pipeline="clicks", topic=t,
                           partition=str(q)) for t in (topic, labels) for q in (0, 1)]  # fmt: skip
            consumed = sample(m, "stream_trainer_events_consumed_total", pipeline="clicks")
            # a poll is counted consumed when it arrives and joined once it is handled: a
            # scrape can fall in between (the last poll's labels neither joined nor
            # unmatched yet), so wait until every label has an outcome; the asserts below
            # say which
            labels_done = sample(m, name, pipeline="clicks", outcome="labelled") + sum(
                sample(m, "stream_trainer_labels_unmatched_total", pipeline="clicks", reason=r)
                for r in ("early", "duplicate", "late", "orphaned", "bad")
            )
            return (
                consumed == len(imps) + len(labs)
                and lags == [0, 0, 0, 0]
                and labels_done >= len(labs)
            )

        m = d.wait_for(caught_up, what="impressions and labels consumed")
        unmatched = {
            r: sample(m, "stream_trainer_labels_unmatched_total", pipeline="clicks", reason=r)
            for r in ("early", "duplicate", "late", "orphaned", "bad")
        }
        joined = sample(m, name, pipeline="clicks", outcome="labelled")
        assert joined == len(labs), (joined, len(labs), unmatched)
        # the step that learned the expired windows may come just after the scrape: wait for
        # the serving process to say it serves a version; from then /predict answers at once
        served = "stream_trainer_served_model_version"
        d.wait_for(lambda m: (sample(m, served, pipeline="clicks") or 0) > 0, what=served)
        host, port = serve.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        body = json.dumps([{k: v for k, v in imps[0].items() if k != "request_id"}] * 3)
        c.request("POST", "/predict", body, {"Authorization": "Bearer tok"})
        r = c.getresponse()
        doc = json.loads(r.read())
        assert r.status == 200 and len(doc["scores"]) == 3 and doc["model_version"] > 0, doc
        c.request("POST", "/predict", body)  # no token
        r = c.getresponse()
        assert r.status == 401 and json.loads(r.read())["error"] == "unauthorized"
        asks = [{**imps[i], "request_id": f"ask{i}"} for i in range(20)] + [{"bad": 1}]
        produce(bs, requests, asks, key_field=None)
        out = consume_all(bs, f"{requests}.predictions", len(asks))
        assert len(out) == len(asks)
        docs = [json.loads(r.value) for r in out]
        assert sum("score" in x for x in docs) == 20 and sum("error" in x for x in docs) == 1
        assert all(x["model_version"] > 0 for x in docs if "score" in x)
        m = d.metrics()
        pending = sample(m, "stream_trainer_impressions_pending", pipeline="clicks")
        assert resolved(m) + pending == len(imps)
        assert sample(m, "stream_trainer_train_to_serve_age_seconds_count", pipeline="clicks") > 0
    finally:
        assert d.terminate() == 0, d.log()[-3000:]
