"""Decode a whole poll at once: msgspec's typed, constrained decoding in C for the
events that are well formed, and :mod:`.decode`'s exact per-record checks for the rest.

Why msgspec: it decodes into a typed ``Struct`` and checks the ranges in C, where
orjson would parse as fast but leave every check to Python. ``make bench``'s stage
profile (BENCHMARKS.md) has decode + validation at 2.3 µs an event, against 5.4 µs
for ``json.loads`` plus our Python checks in the previous session's profile.

The constraints below mirror :mod:`.decode` exactly, and only ever *accept* less:
whatever msgspec refuses (a NaN, a label ``true``, a timestamp in milliseconds, a
missing field, bad UTF-8) goes to the reference decoder, which accepts it or says why
not, with the same reason and detail as before. So the fast path changes speed, never a
result; ``tests/test_decode.py`` checks that on valid, odd and broken events. A kind's
whole-poll decoder (these types, then decode.py for what they refuse) is built in
:mod:`stream_trainer.domains.decoders`, where a kind's schema is known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from stream_trainer.events.decode import MAX_ABS, MAX_ID_CHARS, TS_MAX, TS_MIN

Convert = Callable[[Any], dict[str, Any] | None]  # a Struct -> the event; None: ask decode.py
Fast = tuple[msgspec.json.Decoder, Convert]

_FLOAT_MAX = 1.7976931348623157e308  # finite: msgspec turns 1e400 into inf, this refuses it
Ts = Annotated[float, Meta(ge=TS_MIN, le=TS_MAX)]
Ident = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)] | int
Number = Annotated[float, Meta(ge=-MAX_ABS, le=MAX_ABS)]
ContextValue = (
    Annotated[str, Meta(max_length=MAX_ID_CHARS)]
    | int
    | Annotated[float, Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
    | bool
)


def _ident(v: str | int) -> str | None:
    if type(v) is str:
        return v
    s = str(v)  # an integer id (user 42); a huge one may be too long
    return s if len(s) <= MAX_ID_CHARS else None


class _Click(msgspec.Struct):
    ts: Ts
    user_id: Ident
    item_id: Ident
    label: Literal[0, 1]
    context: dict[str, ContextValue] | None = None


def _click(c: _Click) -> dict[str, Any] | None:
    user, item = _ident(c.user_id), _ident(c.item_id)
    if user is None or item is None:
        return None
    ctx = c.context
    if ctx:
        for k, v in ctx.items():
            t = type(v)
            if t is not str and t is not float:
                ctx[k] = str(v)  # integers and booleans are categories (hour=13, mobile=True)
    else:
        ctx = {}
    return {"ts": c.ts, "user_id": user, "item_id": item, "context": ctx, "label": c.label}


class _Tick(msgspec.Struct):
    ts: Ts
    symbol: Ident
    price: Annotated[float, Meta(ge=1e-9, le=MAX_ABS)]
    volume: Annotated[float, Meta(ge=0.0, le=MAX_ABS)] = 0.0


def _tick(t: _Tick) -> dict[str, Any] | None:
    symbol = _ident(t.symbol)
    if symbol is None:
        return None
    return {"ts": t.ts, "symbol": symbol, "price": t.price, "volume": t.volume}


class _Reading(msgspec.Struct):
    ts: Ts
    sensor_id: Ident
    values: dict[str, Number]


def _reading(channels: tuple[str, ...]) -> Convert:
    def convert(r: _Reading) -> dict[str, Any] | None:
        sensor, values = _ident(r.sensor_id), r.values
        if sensor is None or not values:
            return None
        try:
            picked = {ch: values[ch] for ch in (channels or sorted(values))}
        except KeyError:  # a fixed channel is missing: decode.py names it
            return None
        return {"ts": r.ts, "sensor_id": sensor, "values": picked}

    return convert


def clicks_fast(channels: Sequence[str] = ()) -> Fast:
    return msgspec.json.Decoder(_Click), _click


def ticks_fast(channels: Sequence[str] = ()) -> Fast:
    return msgspec.json.Decoder(_Tick), _tick


def sensors_fast(channels: Sequence[str] = ()) -> Fast:
    return msgspec.json.Decoder(_Reading), _reading(tuple(channels))
