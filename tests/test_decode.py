from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_trainer.events import Rejected, decoder_for
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


@pytest.mark.parametrize(
    "kind,raw,reason",
    [
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
    ],
)
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


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ts",
                "user_id",
                "item_id",
                "label",
                "context",
                "symbol",
                "price",
                "volume",
                "sensor_id",
                "values",
            ]
        ),
        json_values,
    )
)
def test_decoder_never_raises_on_arbitrary_json_objects(doc):
    raw = json.dumps(doc).encode()
    for kind in ("clicks", "ticks", "sensors"):
        out = decoder_for(kind)(raw)
        if isinstance(out, dict):
            assert all(v == v for v in out.values() if isinstance(v, float))  # no NaN passes
        else:
            assert out.reason in R.ALL
