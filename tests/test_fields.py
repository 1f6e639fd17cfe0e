"""The user's own events (issue 27): a ``fields:`` mapping and Avro give exactly the events,
and so the training, of the kind's own JSON; whatever fails is dead-lettered with the
path of the user's field. The broker round trip: test_fields_broker.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from fakes import ListSink, ListSource, run_until

from stream_trainer.config import parse_settings
from stream_trainer.domains.decoders import batch_decoder
from stream_trainer.errors import ConfigError
from stream_trainer.events import Rejected
from stream_trainer.events.avro import encode
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.producers import make_generator

# the user's click log: renamed and nested fields, ISO times, the label as a word
FIELDS: dict[str, Any] = {
    "ts": {"field": "event_time", "unit": "iso8601"},
    "user_id": "uid",
    "item_id": "product.sku",
    "label": {"field": "event", "positive": ["click", "purchase"], "negative": ["view"]},
    "context": {"device": "device.os", "hour": {"field": "hour", "type": "categorical"}},
}
SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Click",
    "fields": [
        {"name": "uid", "type": "string"},
        {"name": "product", "type": {"type": "record", "name": "Product",
                                     "fields": [{"name": "sku", "type": "string"}]}},
        {"name": "event", "type": "string"},
        {"name": "event_time", "type": "string"},
        {"name": "device", "type": {"type": "record", "name": "Device",
                                    "fields": [{"name": "os", "type": "string"}]}},
        {"name": "hour", "type": "long"},
    ],
}  # fmt: skip


SMALL = {"id_buckets": 1024, "pair_buckets": 4096, "context_buckets": 256}  # a quick test


def twins(n: int, seed: int = 5) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The kind's own events (times whole milliseconds, as an ISO string holds them) and
    the same events in the user's shape."""
    canonical, user = [], []
    for i, e in enumerate(make_generator("clicks", seed=seed, count=n)):
        ms = round(e["ts"] * 1000)
        e["ts"] = ms / 1000
        canonical.append(e)
        at = datetime.fromtimestamp(ms // 1000, UTC).replace(microsecond=ms % 1000 * 1000)
        user.append(
            {
                "uid": e["user_id"],
                "product": {"sku": e["item_id"]},
                "event": ("purchase" if i % 3 else "click") if e["label"] else "view",
                "event_time": at.isoformat().replace("+00:00", "Z"),
                "device": {"os": e["context"]["device"]},
                "hour": e["context"]["hour"],
            }
        )
    return canonical, user


def spec(tmp_path: Path, **pipeline: Any) -> dict[str, Any]:
    return {
        "checkpoint": {"dir": str(tmp_path / "ckpt"), "every_seconds": 3600},
        "device": "cpu",
        "pipelines": [{"name": "p", "kind": "clicks", "topics": ["t"], "featurizer": SMALL,
                       "batch": {"max_size": 32, "max_latency_ms": 0}, **pipeline}],
    }  # fmt: skip


def avro_settings(tmp_path: Path, framing: str) -> tuple[dict[str, Any], Any]:
    """The pipeline's ``format``/``avro`` settings and the encoder of one event."""
    if framing == "plain":
        (tmp_path / "click.avsc").write_text(json.dumps(SCHEMA))
        return {"format": "avro", "avro": {"schema": str(tmp_path / "click.avsc")}}, (
            lambda ev: encode(ev, SCHEMA)
        )
    (tmp_path / "schemas").mkdir(exist_ok=True)
    (tmp_path / "schemas" / "42.avsc").write_text(json.dumps(SCHEMA))
    return {"format": "avro", "avro": {"schemas": str(tmp_path / "schemas")}}, (
        lambda ev: encode(ev, SCHEMA, schema_id=42)
    )


def decoder_of(settings: dict[str, Any]) -> Any:
    p = parse_settings(settings).pipelines[0]
    return batch_decoder(p.kind, max_bytes=p.max_event_bytes, wire=p.wire())


class Losses(PipelineHooks):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch(self, *, batch_loss: float, **_: Any) -> None:
        self.losses.append(batch_loss)


def train(settings: dict[str, Any], values: list[bytes]) -> tuple[list[float], dict[str, Any]]:
    s = parse_settings(settings)
    hooks = Losses()
    p = Pipeline(s, s.pipelines[0], hooks=hooks)
    p.restore()
    run_until(p, ListSource({("t", 0): values}, {}, batch=50), ListSink())
    return hooks.losses, p.learner.model.state_dict()


def test_mapped_events_decode_to_exactly_the_kinds_own(tmp_path):
    canonical, user = twins(500)
    own = batch_decoder("clicks")([json.dumps(e).encode() for e in canonical])
    mapped = decoder_of(spec(tmp_path, fields=FIELDS))([json.dumps(u).encode() for u in user])
    assert all(type(e) is dict for e in own)
    assert mapped == own
    # the exact checks (what msgspec's types refuse takes them) give the same events
    pretty = [json.dumps(u, indent=1).encode() for u in user[:20]]  # json.loads' path
    assert decoder_of(spec(tmp_path, fields=FIELDS))(pretty) == own[:20]


@pytest.mark.parametrize("framing", ["plain", "confluent"])
def test_avro_trains_exactly_as_its_json_twin(tmp_path, framing):
    _, user = twins(400)
    wire, enc = avro_settings(tmp_path, framing)
    as_json = [json.dumps(u).encode() for u in user]
    as_avro = [enc(u) for u in user]
    json_spec = spec(tmp_path / "j", fields=FIELDS)
    avro_spec = spec(tmp_path / "a", fields=FIELDS, **wire)
    assert decoder_of(avro_spec)(as_avro) == decoder_of(json_spec)(as_json)
    losses_j, weights_j = train(json_spec, as_json)
    losses_a, weights_a = train(avro_spec, as_avro)
    assert len(losses_j) >= 10 and losses_a == losses_j
    assert weights_a.keys() == weights_j.keys()
    for k, v in weights_j.items():
        assert torch.equal(weights_a[k], v), k


def test_kafka_timestamps_and_milliseconds(tmp_path):
    raw = [b'{"u": "a", "i": "b", "ok": 1, "at": 1767225600123}']
    fields = {"user_id": "u", "item_id": "i", "label": "ok"}
    kafka = decoder_of(spec(tmp_path, fields={**fields, "ts": "kafka"}))
    assert kafka(raw, [1767225600500])[0]["ts"] == 1767225600.5
    ms = decoder_of(spec(tmp_path, fields={**fields, "ts": {"field": "at", "unit": "ms"}}))
    assert ms(raw)[0]["ts"] == 1767225600.123


GOOD = {"uid": "u1", "product": {"sku": "i1"}, "event": "click",
        "event_time": "2026-01-01T00:00:00Z", "device": {"os": "ios"}, "hour": 3}  # fmt: skip
BAD_JSON = [  # (the user's event, reason, detail's start: the path of the user's field)
    ({k: v for k, v in GOOD.items() if k != "uid"}, "missing_field", "uid"),
    ({**GOOD, "product": {}}, "missing_field", "product.sku"),
    ({**GOOD, "product": "i1"}, "missing_field", "product.sku"),
    ({**GOOD, "uid": {"id": 1}}, "wrong_type", "uid:"),
    ({**GOOD, "uid": ""}, "out_of_range", "uid:"),
    ({**GOOD, "event": "hover"}, "out_of_range", "event:"),
    ({**GOOD, "event": ["click"]}, "out_of_range", "event:"),
    ({**GOOD, "event_time": "yesterday"}, "bad_timestamp", "event_time:"),
    ({**GOOD, "event_time": 1767225600}, "bad_timestamp", "event_time:"),
    ({**GOOD, "event_time": "2200-01-01T00:00:00Z"}, "bad_timestamp", "event_time:"),
    ({**GOOD, "hour": [3]}, "wrong_type", "hour:"),
]


@pytest.mark.parametrize(("doc", "reason", "path"), BAD_JSON)
def test_bad_mapped_events_name_the_users_path(tmp_path, doc, reason, path):
    fields = {**FIELDS, "context": {**FIELDS["context"], "w": {"field": "w", "type": "numeric"}}}
    (out,) = decoder_of(spec(tmp_path, fields=fields))([json.dumps(doc).encode()])
    assert isinstance(out, Rejected) and out.reason == reason, out
    assert out.detail.startswith(path), out
    # and the same through Avro, where the schema lets the event be written at all
    try:
        raw = encode(doc, SCHEMA)
    except (ValueError, TypeError, KeyError, AttributeError):
        return
    wire, _ = avro_settings(tmp_path, "plain")
    assert decoder_of(spec(tmp_path, fields=fields, **wire))([raw]) == [out]


def test_a_mistyped_numeric_context_field_names_its_path(tmp_path):
    fields = {**FIELDS, "context": {"price": {"field": "cart.price", "type": "numeric"}}}
    (out,) = decoder_of(spec(tmp_path, fields=fields))(
        [json.dumps({**GOOD, "cart": {"price": "cheap"}}).encode()]
    )
    assert out == Rejected("wrong_type", "cart.price: context price must be a number")


@pytest.mark.parametrize("framing", ["plain", "confluent"])
def test_bytes_that_are_not_avro_are_dead_lettered_with_a_reason(tmp_path, framing):
    wire, enc = avro_settings(tmp_path, framing)
    good = enc(GOOD)
    cut, extra = good[:-3], good + b"\x00"
    values = [b"", None, cut, extra, b'{"uid": "u1"}', good]
    if framing == "confluent":
        values.append(b"\x00\x00\x00\x00\x07" + good[5:])  # schema id 7: no 7.avsc
    out = decoder_of(spec(tmp_path, fields=FIELDS, **wire))(values)
    reasons = [o.reason if isinstance(o, Rejected) else "ok" for o in out]
    expected = ["empty", "empty", "not_avro", "not_avro", "not_avro", "ok"]
    assert reasons == expected + (["unknown_schema"] if framing == "confluent" else [])


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ({"fields": {"symbol": "s"}}, "fields: symbol not a field of kind 'clicks'"),
        ({"fields": {"user_id": "a..b"}}, "'a..b' is not a dotted path"),
        ({"fields": {"ts": {"field": "t", "unit": "h"}}}, "fields.ts"),
        ({"fields": {"label": {"field": "e", "positive": []}}}, "fields.label"),
        ({"format": "avro"}, "format: avro needs avro:"),
        ({"avro": {"schemas": "tests/fixtures/avro"}}, "avro: settings need format: avro"),
        ({"format": "avro", "avro": {"schema": "nope.avsc"}}, "cannot read nope.avsc"),
        ({"format": "avro", "avro": {"schemas": "."}}, "has no <id>.avsc schema files"),
        ({"fields": {"label": {"field": "e", "positive": [1], "negative": [1]}}},
         "values both positive and negative"),
    ],
)  # fmt: skip
def test_bad_wire_settings_are_one_clear_error(tmp_path, pipeline, message):
    with pytest.raises(ConfigError) as err:
        parse_settings(spec(tmp_path, **pipeline))
    assert message in str(err.value), str(err.value)


def test_requests_to_a_mapped_pipeline_are_read_in_the_users_shape(tmp_path):
    from stream_trainer.serving.scorer import Scorer

    p = parse_settings(spec(tmp_path, fields=FIELDS)).pipelines[0]
    scorer = Scorer(p, publisher=None)  # type: ignore[arg-type]  # (validate reads no weights)
    request = {k: v for k, v in GOOD.items() if k != "event"}  # no label in a request
    ev = scorer.validate(request)
    assert ev == {"ts": 1767225600.0, "user_id": "u1", "item_id": "i1",
                  "context": {"device": "ios", "hour": "3"}, "label": 0}  # fmt: skip
    assert scorer.validate({**request, "product": 3}) == Rejected("missing_field", "product.sku")


def test_avro_in_the_kinds_own_shape_needs_no_mapping(tmp_path):
    own_schema = {"type": "record", "name": "C", "fields": [
        {"name": "ts", "type": "double"}, {"name": "user_id", "type": "string"},
        {"name": "item_id", "type": "string"},
        {"name": "context", "type": {"type": "map", "values": ["string", "long", "double"]}},
        {"name": "label", "type": "int"}]}  # fmt: skip
    (tmp_path / "own.avsc").write_text(json.dumps(own_schema))
    canonical, _ = twins(200)
    canonical[7]["label"] = 2  # refused alike: the kind's own check, the kind's own words
    wire = {"format": "avro", "avro": {"schema": str(tmp_path / "own.avsc")}}
    got = decoder_of(spec(tmp_path, **wire))([encode(e, own_schema) for e in canonical])
    assert got == batch_decoder("clicks")([json.dumps(e).encode() for e in canonical])
    assert got[7] == Rejected("wrong_type", "label must be 0 or 1")


@pytest.mark.parametrize("wire", ["json", "plain", "confluent"])
def test_the_users_decoders_never_raise_on_arbitrary_bytes(tmp_path, wire):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from stream_trainer.events import reasons as R

    extra = {} if wire == "json" else avro_settings(tmp_path, wire)[0]
    decode = decoder_of(spec(tmp_path, fields=FIELDS, **extra))
    good = json.dumps(GOOD).encode() if wire == "json" else avro_settings(tmp_path, wire)[1](GOOD)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=200), st.integers(0, 60), st.binary(max_size=8))
    def check(noise: bytes, cut: int, patch: bytes) -> None:
        mutated = good[:cut] + patch + good[cut + len(patch) :]  # near misses of a good event
        for out in decode([noise, mutated], [0, 1]):
            assert type(out) is dict or out.reason in R.ALL, out

    check()
