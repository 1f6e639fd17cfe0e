"""Decode and validate one Kafka message value. Pure: never raises on any input.

A kind's decoder (its domain's schema framed here) is built in
:mod:`stream_trainer.domains.decoders`, above this module: only the registry knows a
kind's schema.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from stream_trainer.events import reasons as R

MAX_ID_CHARS = 256
TS_MIN, TS_MAX = 0.0, 4102444800.0  # 1970 .. 2100, in seconds
MAX_ABS = 1e12  # numbers beyond this are almost surely a unit or encoding bug


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why an event was refused. ``reason`` is one of :mod:`reasons`; detail is for humans."""

    reason: str
    detail: str = ""


Decoded = dict[str, Any] | Rejected
Check = Callable[[dict[str, Any]], dict[str, Any]]  # a parsed object -> the event, or _Reject


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.rejected = Rejected(reason, detail)


def _no_constants(name: str) -> Any:
    raise _Reject(R.NON_FINITE, f"{name} is not allowed")


def _number(
    doc: dict[str, Any],
    key: str,
    *,
    lo: float = -MAX_ABS,
    hi: float = MAX_ABS,
    required: bool = True,
    default: float = 0.0,
) -> float:
    if key not in doc:
        if required:
            raise _Reject(R.MISSING_FIELD, key)
        return default
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Reject(R.WRONG_TYPE, f"{key} must be a number")
    v = float(v)
    if not math.isfinite(v):
        raise _Reject(R.NON_FINITE, key)
    if not lo <= v <= hi:
        raise _Reject(R.OUT_OF_RANGE, f"{key}={v:g} outside [{lo:g}, {hi:g}]")
    return v


# One decoder, built once: ``json.loads(text, parse_constant=...)`` builds a new decoder
# per call, which cost as much as the parsing itself. (JSONDecoder.__init__ sets
# ``scan_once``; typeshed leaves the attribute out, hence the ignore.)
_scan: Callable[[str, int], tuple[Any, int]]
_scan = json.JSONDecoder(parse_constant=_no_constants).scan_once  # type: ignore[attr-defined]


def _parse(text: str) -> Any:
    """``json.loads`` without its per-call set-up: the scanner straight away when the
    text is one JSON value with no surrounding whitespace; ``json.loads`` otherwise
    (whitespace, trailing data, errors: its exact behaviour and messages)."""
    try:
        doc, end = _scan(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):
        return json.loads(text, parse_constant=_no_constants)
    return doc


def _ts(doc: dict[str, Any]) -> float:
    ts = _number(doc, "ts", lo=-math.inf, hi=math.inf)
    if not TS_MIN <= ts <= TS_MAX:
        hint = " (milliseconds? ts is in seconds)" if ts > TS_MAX else ""
        raise _Reject(R.BAD_TIMESTAMP, f"ts={ts:g}{hint}")
    return ts


def _ident(doc: dict[str, Any], key: str) -> str:
    if key not in doc:
        raise _Reject(R.MISSING_FIELD, key)
    v = doc[key]
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise _Reject(R.WRONG_TYPE, f"{key} must be a string or integer")
    s = str(v)
    if not s or len(s) > MAX_ID_CHARS:
        raise _Reject(R.OUT_OF_RANGE, f"{key} must have 1..{MAX_ID_CHARS} characters")
    return s


def _clicks(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ts": _ts(doc),
        "user_id": _ident(doc, "user_id"),
        "item_id": _ident(doc, "item_id"),
    }
    ctx = doc.get("context", {})
    if ctx is None:
        ctx = {}
    if not isinstance(ctx, dict):
        raise _Reject(R.WRONG_TYPE, "context must be an object")
    clean: dict[str, str | float] = {}
    for k, v in ctx.items():
        if isinstance(v, bool) or isinstance(v, str):
            if len(str(v)) > MAX_ID_CHARS:
                raise _Reject(R.OUT_OF_RANGE, f"context.{k} is too long")
            clean[k] = str(v)
        elif isinstance(v, int):
            clean[k] = str(v)  # integers are categories (hour=13)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise _Reject(R.NON_FINITE, f"context.{k}")
            clean[k] = v  # floats are magnitudes
        else:
            raise _Reject(R.WRONG_TYPE, f"context.{k} must be a string, number or boolean")
    out["context"] = clean
    if "label" not in doc:
        raise _Reject(R.MISSING_FIELD, "label")
    label = doc["label"]
    if label not in (0, 1):  # 0/1, false/true or 0.0/1.0; "1" or 0.5 are refused
        raise _Reject(R.WRONG_TYPE, "label must be 0 or 1")
    out["label"] = int(label)
    return out


def _ticks(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "ts": _ts(doc),
        "symbol": _ident(doc, "symbol"),
        "price": _number(doc, "price", lo=1e-9),
        "volume": _number(doc, "volume", lo=0.0, required=False),
    }


def sensors_schema(channels: Sequence[str] = ()) -> Check:
    """Sensors: ts, sensor_id and ``values``, numbers for exactly ``channels`` (all the
    event's own when none are fixed)."""
    channels = tuple(channels)

    def check(doc: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"ts": _ts(doc), "sensor_id": _ident(doc, "sensor_id")}
        values = doc.get("values")
        if values is None:
            raise _Reject(R.MISSING_FIELD, "values")
        if not isinstance(values, dict):
            raise _Reject(R.WRONG_TYPE, "values must be an object of numbers")
        wanted = channels or sorted(values)
        if not wanted:
            raise _Reject(R.MISSING_FIELD, "values is empty")
        out["values"] = {ch: _number(values, ch) for ch in wanted}
        return out

    return check


def _custom(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


def clicks_schema(channels: Sequence[str] = ()) -> Check:
    """Clicks: ts, user_id, item_id, an optional flat ``context`` and a 0/1 label."""
    return _clicks


def ticks_schema(channels: Sequence[str] = ()) -> Check:
    """Ticks: ts, symbol, a positive price and an optional volume."""
    return _ticks


def custom_schema(channels: Sequence[str] = ()) -> Check:
    """Custom: any JSON object, as it is (the user's featurizer checks it)."""
    return _custom


def decoder(check: Check, *, max_bytes: int = 1 << 20) -> Callable[[bytes | None], Decoded]:
    """Frame one schema's ``check``: empty, too large, not UTF-8, not JSON or not an
    object are refused before it sees the event; what it refuses is a Rejected too."""

    def run(raw: bytes | None) -> Decoded:
        if not raw:
            return Rejected(R.EMPTY, "empty message")
        if len(raw) > max_bytes:
            return Rejected(R.TOO_LARGE, f"{len(raw)} bytes > {max_bytes}")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            return Rejected(R.INVALID_UTF8, f"at byte {err.start}")
        try:
            doc = _parse(text)
        except _Reject as rej:
            return rej.rejected
        except RecursionError:
            return Rejected(R.TOO_DEEP, "nesting too deep")
        except ValueError as err:  # JSONDecodeError
            return Rejected(R.NOT_JSON, str(err)[:120])
        if not isinstance(doc, dict):
            return Rejected(R.NOT_OBJECT, f"got {type(doc).__name__}")
        try:
            return check(doc)
        except _Reject as rej:
            return rej.rejected
        except RecursionError:
            return Rejected(R.TOO_DEEP, "nesting too deep")

    return run
