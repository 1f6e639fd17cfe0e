"""Serving: the published copy of the weights, the scorer, POST /predict. No broker."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest
import torch
from fakes import CheckedThread, ListSink, ListSource, run_until
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_decode import FIELDS, ODD, REJECTIONS, json_values
from test_pipeline import click_stream, settings

from stream_trainer.config import parse_settings
from stream_trainer.errors import ConfigError
from stream_trainer.metrics.serving import ServingMetrics
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.serving import Publisher, Scorer
from stream_trainer.serving.http import PredictServer, read_token

EVENT = {"ts": 1.7e9, "user_id": "u1", "item_id": "i2", "context": {"device": "ios"}}


def trained_pipeline(tmp_path, n=600):
    s = settings(tmp_path, output_topic=None)
    p = Pipeline(s, s.pipelines[0])
    p.publisher = Publisher(every_s=0.0)
    run_until(p, ListSource({("t", 0): click_stream(n, 1)}, {}), ListSink())
    return p


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_scores_match_the_model_and_mutate_nothing(tmp_path):
    p = trained_pipeline(tmp_path)
    scorer = Scorer(p.spec, p.publisher)
    before, dedup = weights(p.learner.model), list(p.dedup._order)
    res = scorer.score([EVENT, {**EVENT, "user_id": "u9"}, {"ts": 1.7e9}])
    assert res.version == p.learner.updates > 0
    assert res.scores[2] is None and res.errors[0][0] == 2
    assert res.errors[0][1].reason == "missing_field"
    fb = p.featurizer.featurize([{**EVENT, "label": 0}])
    want = float(p.learner.predict(fb.inputs)[0])
    assert res.scores[0] == pytest.approx(want, rel=1e-5)
    after = weights(p.learner.model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the trainer's model
    assert list(p.dedup._order) == dedup
    assert scorer.featurizer is not p.featurizer


def test_a_copy_in_use_is_never_rewritten(tmp_path):
    p = trained_pipeline(tmp_path, 200)
    pub = p.publisher
    with pub.use() as held:
        snap = weights(held.module)
        for _ in range(6):  # more publications than copies: the held one stays as it was
            p.learner.model.mlp[0].bias.data += 1.0
            p.learner.updates += 1
            pub.publish(p.learner)
        assert all(torch.equal(snap[k], v) for k, v in held.module.state_dict().items())
        assert pub.current is not held
    assert pub.current.version == p.learner.updates


def clocked_publisher():
    """(a publisher every 1 s on a fake clock, the clock, its publications, a learner)."""
    now = [0.0]
    seen = []
    pub = Publisher(every_s=1.0, clock=lambda: now[0], on_publish=lambda v, a: seen.append((v, a)))

    class L:
        model, updates, task = torch.nn.Linear(2, 1), 0, "binary"

    return pub, now, seen, L()


def test_publication_age_and_period():
    pub, now, seen, learner = clocked_publisher()
    for t in (0.0, 0.3, 0.6, 0.9, 1.2, 1.5, 2.4):
        now[0] = t
        learner.updates += 1
        pub.updated(learner)
    # published at 0.0 (first), 1.2 (oldest unpublished update from 0.3), 2.4 (from 1.5)
    assert [v for v, _ in seen] == [1, 5, 7]
    assert [round(a, 3) for _, a in seen] == [0.0, 0.9, 0.9]


def test_catch_up_publishes_what_the_last_steps_left_once_due():
    pub, now, seen, learner = clocked_publisher()
    assert not pub.catch_up(learner)  # nothing trained: nothing to publish
    for t in (0.0, 0.1, 0.2):  # a burst: the first step publishes, the others wait
        now[0] = t
        learner.updates += 1
        pub.updated(learner)
    assert [v for v, _ in seen] == [1]
    now[0] = 0.9  # silence: not due yet
    assert not pub.catch_up(learner) and [v for v, _ in seen] == [1]
    now[0] = 1.0  # due: the burst's last update, aged from its first unpublished step
    assert pub.catch_up(learner)
    assert seen[-1] == (3, pytest.approx(0.9))
    now[0] = 5.0  # nothing new since: no publication
    assert not pub.catch_up(learner) and len(seen) == 2


def test_stateful_featurizers_are_not_served(tmp_path):
    s = parse_settings(
        {"device": "cpu", "pipelines": [{"name": "t", "kind": "ticks", "topics": ["x"]}]}
    )
    with pytest.raises(ConfigError, match="stateless featurizer"):
        Scorer(s.pipelines[0], Publisher())


def post(address, path, body, headers=None, raw=None):
    host, port = address.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    data = raw if raw is not None else json.dumps(body).encode()
    c.request("POST", path, data, {"Content-Type": "application/json", **(headers or {})})
    r = c.getresponse()
    out = r.status, json.loads(r.read())
    c.close()
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    p = trained_pipeline(tmp_path_factory.mktemp("serve"), 300)
    reg = CollectorRegistry()
    m = ServingMetrics(reg)
    srv = PredictServer(
        "127.0.0.1:0", {"p": Scorer(p.spec, p.publisher)}, token="s3cret",
        max_body_bytes=4096, max_events=100, on_request=m.on_request,
    ).start()  # fmt: skip
    yield p, srv, reg
    srv.stop()


AUTH = {"Authorization": "Bearer s3cret"}


def test_predict_one_and_a_batch(server):
    p, srv, reg = server
    status, doc = post(srv.address, "/predict", EVENT, AUTH)
    assert status == 200 and 0.0 < doc["score"] < 1.0
    assert doc["model_version"] == p.learner.updates
    status, doc = post(srv.address, "/predict/p", [EVENT, {"user_id": 3}], AUTH)
    assert status == 200 and doc["scores"][0] is not None and doc["scores"][1] is None
    assert doc["errors"][0]["index"] == 1 and doc["errors"][0]["error"] == "missing_field"
    ok = {"pipeline": "p", "outcome": "ok"}
    assert reg.get_sample_value("stream_trainer_predict_requests_total", ok) == 2
    scored = {"pipeline": "p", "path": "http"}
    assert reg.get_sample_value("stream_trainer_predict_events_total", scored) == 2


def test_keep_alive_answers_do_not_wait_for_a_delayed_ack(server, monkeypatch):
    """Headers and body go out as two writes: with Nagle's algorithm on, the body
    waited for the client's delayed ACK (~40 ms a request on Linux; scripts/bench_serving.py
    measures the latency). So every connection the server accepts has TCP_NODELAY set,
    and a keep-alive client's requests all go over its one connection."""
    _, srv, _ = server
    nodelay: list[int] = []  # per connection the server handled
    handler = srv.httpd.RequestHandlerClass
    handle = handler.handle

    def recorded(self):
        nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        handle(self)

    monkeypatch.setattr(handler, "handle", recorded)
    host, port = srv.address.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(EVENT).encode()
    for _ in range(40):
        c.request("POST", "/predict", body, {"Content-Type": "application/json", **AUTH})
        r = c.getresponse()
        assert r.status == 200 and "score" in json.loads(r.read())
    c.close()
    assert len(nodelay) == 1 and nodelay[0] != 0


@pytest.mark.parametrize(
    ("headers", "raw", "status", "error"),
    [
        ({}, None, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong"}, None, 401, "unauthorized"),
        (AUTH, b"{not json", 400, "not_json"),
        (AUTH, b"[" * 5000, 413, "too_large"),
        (AUTH, json.dumps([EVENT] * 101).encode()[:4000], 400, "not_json"),
        (AUTH, b'{"ts": NaN, "user_id": 1, "item_id": 2}', 400, "not_json"),
        (AUTH, json.dumps({"ts": 1.7e9, "user_id": 1}).encode(), 422, "missing_field"),
        (AUTH, json.dumps([{}] * 101).encode(), 413, "too_many_events"),
    ],
)
def test_bad_requests_get_a_reason(server, headers, raw, status, error):
    p, srv, reg = server
    before = weights(p.learner.model)
    sample = ("stream_trainer_predict_requests_total", {"pipeline": "p", "outcome": error})
    counted = reg.get_sample_value(*sample) or 0
    got, doc = post(srv.address, "/predict", None, headers, raw=raw)
    assert (got, doc["error"]) == (status, error)
    assert reg.get_sample_value(*sample) == counted + 1
    assert all(torch.equal(before[k], v) for k, v in p.learner.model.state_dict().items())


def test_unknown_path_and_not_ready(tmp_path):
    s = settings(tmp_path)
    p = Pipeline(s, s.pipelines[0])
    srv = PredictServer("127.0.0.1:0", {"p": Scorer(p.spec, Publisher())}).start()
    try:
        assert post(srv.address, "/predict/nope", EVENT)[0] == 404
        status, doc = post(srv.address, "/predict", EVENT)
        assert (status, doc["error"]) == (503, "model_not_ready")
    finally:
        srv.stop()


def test_token_from_env_or_file(tmp_path):
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert read_token(f, {}) == "from-file"
    assert read_token(f, {"STREAM_TRAINER_SERVING_TOKEN": "env"}) == "env"
    assert read_token(None, {}) is None
    with pytest.raises(ConfigError, match="token_file"):
        read_token(tmp_path / "missing", {})


def test_serving_while_training_never_sees_torn_weights(tmp_path):
    """Requests in a loop while the trainer steps and publishes: every answer is the score
    its version's weights give (never a copy rewritten or half-copied while in use), and
    versions only go up. The requests run on a thread whose failure fails the test."""
    s = settings(tmp_path, output_topic=None)
    p = Pipeline(s, s.pipelines[0])
    example = p.featurizer.featurize([{**EVENT, "label": 0}]).inputs
    expected: dict[int, float] = {}  # version -> EVENT's score by the trainer's own weights

    def published(version, age):  # on the trainer's thread, between two steps
        expected[version] = float(p.learner.predict(example)[0])

    p.publisher = Publisher(every_s=0.01, on_publish=published)
    scorer = Scorer(p.spec, p.publisher)
    done = threading.Event()
    answers: list[tuple[int, float]] = []

    def ask():
        while not done.is_set():
            res = scorer.score([EVENT] * 16)
            if res.version >= 0:
                assert np.allclose(res.scores, res.scores[0]) and 0 < res.scores[0] < 1
                answers.append((res.version, res.scores[0]))
            time.sleep(0.001)

    t = CheckedThread(ask, "requests")
    t.start()
    try:
        run_until(p, ListSource({("t", 0): click_stream(3000, 2)}, {}), ListSink())
    finally:
        done.set()
        t.join()  # raises what the requests' thread raised
    versions = [v for v, _ in answers]
    assert len(set(versions)) > 1 and versions == sorted(versions)
    for version, score in answers:
        assert score == pytest.approx(expected[version], rel=1e-5), version


@hsettings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values))
def test_request_validation_fast_path_equals_the_schema_checks(doc):
    """The scorer checks a request's event with msgspec first (in C); whatever the
    result, it is the schema's (the reference decoder's), reason and detail included."""
    scorer = _FAST_SCORER
    slow = Scorer.__new__(Scorer)
    slow.__dict__.update({**scorer.__dict__, "fast": None})
    for d in [doc, *ODD_DOCS]:
        assert scorer.validate(d) == slow.validate(d)


def _odd_docs() -> list:
    out = []
    for raw in [*ODD, *(raw for _, raw, _ in REJECTIONS if raw is not None)]:
        try:
            doc = json.loads(raw)
        except (ValueError, TypeError, RecursionError):
            continue
        out.append(doc)
    return out


ODD_DOCS = _odd_docs()
_FAST_SCORER = Scorer(
    parse_settings({"pipelines": [{"name": "c", "kind": "clicks", "topics": ["t"]}]}).pipelines[0],
    Publisher(),
)
