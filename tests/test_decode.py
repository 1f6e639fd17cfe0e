from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_trainer.domains.decoders import decoder_for
from stream_trainer.events import Rejected
from stream_trainer.events import reasons as R

CLICK = {
    "ts": 1767225600.5,
    "user_id": "u1",
    "item_id": 7,
    "context": {"device": "mobile", "hour": 13, "score": 0.5, "new": True},
    "label": 1,
}
TICK = {"ts": 1767225600, "symbol": "AAPL", "price": 187.5, "volume": 100}
SENSOR = {
    "ts": 1767225600,
    "sensor_id": "s1",
    "values": {"temp": 20.5, "humidity": 40, "pressure": 1013.2, "extra": 1},
}


def enc(doc) -> bytes:
    return json.dumps(doc).encode()


def test_valid_events_are_normalised():
    c = decoder_for("clicks")(enc(CLICK))
    assert c == {
        "ts": 1767225600.5,
        "user_id": "u1",
        "item_id": "7",
        "label": 1,
        "context": {"device": "mobile", "hour": "13", "score": 0.5, "new": "True"},
    }
    assert decoder_for("ticks")(enc(TICK))["price"] == 187.5
    s = decoder_for("sensors", channels=("temp", "humidity", "pressure"))(enc(SENSOR))
    assert s["values"] == {"temp": 20.5, "humidity": 40.0, "pressure": 1013.2}


def test_unknown_fields_are_ignored():
    assert isinstance(decoder_for("ticks")(enc({**TICK, "exchange": "X"})), dict)


REJECTIONS = [
    ("clicks", b"", R.EMPTY),
    ("clicks", b"\xff\xfe{}", R.INVALID_UTF8),
    ("clicks", b"{oops", R.NOT_JSON),
    ("clicks", b"[1]", R.NOT_OBJECT),
    ("clicks", b"null", R.NOT_OBJECT),
    ("clicks", enc({k: v for k, v in CLICK.items() if k != "label"}), R.MISSING_FIELD),
    ("clicks", enc({**CLICK, "label": 2}), R.WRONG_TYPE),
    ("clicks", enc({**CLICK, "label": "1"}), R.WRONG_TYPE),
    ("clicks", enc({**CLICK, "user_id": None}), R.WRONG_TYPE),
    ("clicks", enc({**CLICK, "user_id": "x" * 1000}), R.OUT_OF_RANGE),
    ("clicks", enc({**CLICK, "context": {"a": {"b": 1}}}), R.WRONG_TYPE),
    ("clicks", b'{"ts": NaN, "user_id": "u", "item_id": "i", "label": 1}', R.NON_FINITE),
    ("ticks", b'{"ts": 1767225600, "symbol": "A", "price": Infinity}', R.NON_FINITE),
    ("ticks", b'{"ts": 1767225600, "symbol": "A", "price": 1e999}', R.NON_FINITE),
    ("ticks", enc({**TICK, "price": -3.0}), R.OUT_OF_RANGE),
    ("ticks", enc({**TICK, "price": 1e308}), R.OUT_OF_RANGE),
    ("ticks", enc({**TICK, "price": "12"}), R.WRONG_TYPE),
    ("ticks", enc({**TICK, "price": True}), R.WRONG_TYPE),
    ("ticks", enc({**TICK, "ts": 1767225600000}), R.BAD_TIMESTAMP),
    ("ticks", enc({**TICK, "ts": -5}), R.BAD_TIMESTAMP),
    ("sensors", enc({**SENSOR, "values": [1, 2]}), R.WRONG_TYPE),
    ("sensors", enc({**SENSOR, "values": {"temp": 1}}), R.MISSING_FIELD),
    ("clicks", b"[" * 100_000 + b"]" * 100_000, R.TOO_DEEP),
    ("clicks", b" " * (2 << 20), R.TOO_LARGE),
]


@pytest.mark.parametrize("kind,raw,reason", REJECTIONS)
def test_rejections_have_a_reason(kind, raw, reason):
    out = decoder_for(kind, channels=("temp", "humidity", "pressure"))(raw)
    assert isinstance(out, Rejected), out
    assert out.reason == reason, out
    assert out.reason in R.ALL


def test_bad_timestamp_in_milliseconds_says_so():
    out = decoder_for("ticks")(enc({**TICK, "ts": 1767225600000}))
    assert "milliseconds" in out.detail


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_decoder_never_raises_on_arbitrary_bytes(raw):
    for kind in ("clicks", "ticks", "sensors", "custom"):
        out = decoder_for(kind)(raw)
        assert isinstance(out, dict) or out.reason in R.ALL


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=True) | st.integers() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=20,
)


FIELDS = [
    "ts", "user_id", "item_id", "label", "context", "symbol", "price", "volume", "sensor_id",
    "values",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values))
def test_decoder_never_raises_on_arbitrary_json_objects(doc):
    raw = json.dumps(doc).encode()
    for kind in ("clicks", "ticks", "sensors"):
        out = decoder_for(kind)(raw)
        if isinstance(out, dict):
            assert all(v == v for v in out.values() if isinstance(v, float))  # no NaN passes
        else:
            assert out.reason in R.ALL


# ---- the batch decoder (events/fast.py) gives exactly what decode.py gives ----------------
FAST_CHANNELS = {"clicks": (), "ticks": (), "sensors": ("temp", "humidity", "pressure")}


def both(kind: str, raws: list[bytes]) -> tuple[list, list]:
    from stream_trainer.domains.decoders import batch_decoder

    channels = FAST_CHANNELS[kind]
    slow = decoder_for(kind, channels=channels)
    return batch_decoder(kind, channels=channels)(raws), [slow(r) for r in raws]


@pytest.mark.parametrize("kind", ["clicks", "ticks", "sensors"])
def test_batch_decoder_equals_the_reference_on_generated_events(kind):
    from stream_trainer.producers.generators import make_generator

    raws = [enc(e) for e in make_generator(kind, seed=3, count=2000)]
    if kind == "sensors":
        FAST_CHANNELS["sensors"] = ()
    try:
        fast, slow = both(kind, raws)
    finally:
        FAST_CHANNELS["sensors"] = ("temp", "humidity", "pressure")
    assert fast == slow
    assert all(isinstance(e, dict) for e in fast)


ODD = [
    enc({**CLICK, "label": True}),  # accepted by the reference, refused by msgspec's Literal
    enc({**CLICK, "label": 1.0}),
    enc({**CLICK, "context": None}),
    enc({**CLICK, "context": {}}),
    enc({**CLICK, "user_id": 10**30, "item_id": 10**300}),  # the second is too long
    enc({**CLICK, "context": {"big": 10**30, "x": 1e300, "b": False}}),
    b'{"ts":1767225600,"user_id":"u","item_id":"i","label":1,"label":0}',  # the last wins
    b' {"ts":1767225600,"user_id":"u","item_id":"i","label":1} ',
    b'{"ts":1767225600,"user_id":"u","item_id":"i","label":1} x',
    b'{"ts":1767225600,"user_id":"u","item_id":"i","label":1,"deep":'
    + b"[" * 5000
    + b"]" * 5000
    + b"}",
    b'{"ts":1767225600,"user_id":"u","item_id":"i","label":1,"extra":NaN}',
    enc({**TICK, "volume": -1}),
    enc({**TICK, "symbol": ""}),
    enc({**TICK, "price": 10**13}),
    enc({**SENSOR, "values": {"temp": 1, "humidity": True, "pressure": 3}}),
    enc({**SENSOR, "values": {"temp": 1, "humidity": 2, "pressure": 3, "note": "x"}}),
    enc({**SENSOR, "values": {}}),
    enc({**SENSOR, "values": None}),
    None,
]


@pytest.mark.parametrize("kind", ["clicks", "ticks", "sensors"])
def test_batch_decoder_equals_the_reference_on_odd_and_broken_events(kind):
    raws = ODD + [raw for _, raw, _ in REJECTIONS if raw is not None]
    fast, slow = both(kind, raws)
    assert fast == slow


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), json_values))
def test_batch_decoder_equals_the_reference_on_arbitrary_objects(doc):
    raw = json.dumps(doc).encode()
    for kind in ("clicks", "ticks", "sensors"):
        fast, slow = both(kind, [raw])
        assert fast == slow
