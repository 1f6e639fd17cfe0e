"""The user's own event as a kind's canonical one: a pipeline's ``fields:`` compiled once
into a function of the parsed object (and the Kafka record's timestamp), run before the
kind's checks. Pure; every failure is a :class:`~.decode.Rejected` whose detail starts
with the path of the user's field that failed.

``spec`` is the ``fields:`` mapping after validation (pipeline_config.py), as plain data
(so an ingest worker gets it pickled): per canonical field a dotted path, or a dict:

- ``ts``: a path (Unix seconds), ``"kafka"`` (the record's own timestamp), or
  ``{"field": path, "unit": "s" | "ms" | "iso8601"}``;
- ``label``: a path (a 0/1 value), or ``{"field": path, "positive": [...],
  "negative": [...] | None}`` (without ``negative``, every other value is a 0);
- ``context`` (clicks): ``{name: path | {"field": path, "type": "categorical" |
  "numeric" | "auto"}}``; a context field the event lacks is left out;
- ``values`` (sensors): a path to an object of numbers, or ``{channel: path}``.

A canonical field the spec leaves out is read from the field of the same name.

>>> m = compile_mapping({"user_id": "user.id", "item_id": "sku",
...     "ts": {"field": "at", "unit": "iso8601"},
...     "label": {"field": "event", "positive": ["click"], "negative": ["view"]},
...     "context": {"os": "device.os", "price": {"field": "price", "type": "numeric"}}},
...     ("ts", "user_id", "item_id", "label", "context"), optional=("context",))
>>> ev = m({"user": {"id": 7}, "sku": "s1", "at": "2026-12-07T10:00:00Z", "event": "click",
...         "device": {"os": "ios"}, "price": 20}, None)
>>> ev["ts"], ev["user_id"], ev["item_id"], ev["label"], ev["context"]
(1796637600.0, 7, 's1', 1, {'os': 'ios', 'price': 20.0})
>>> def why(doc):
...     try:
...         m(doc, None)
...     except _Reject as rej:
...         return rej.rejected
>>> why({"user": {"id": 7}, "sku": "s1", "at": "yesterday", "event": "click"})
Rejected(reason='bad_timestamp', detail="at: 'yesterday' is not an ISO-8601 time")
>>> why({"user": {"id": 7}, "sku": "s1", "at": "2026-12-07", "event": "buy"})
Rejected(reason='out_of_range', detail="event: 'buy' is neither positive nor negative")
>>> why({"at": "2026-12-07", "sku": "s1"})
Rejected(reason='missing_field', detail='user.id')
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from stream_trainer.events import reasons as R
from stream_trainer.events.decode import _Reject
from stream_trainer.events.paths import Missing, getter

Transform = Callable[[Any, "int | None"], dict[str, Any]]  # (parsed, kafka ms) -> canonical
_Read = Callable[[Any, "int | None"], Any]  # one canonical field's value (or _ABSENT)
_ABSENT: Any = object()


def _path_of(entry: Any) -> str | None:
    if isinstance(entry, str):
        return None if entry == "kafka" else entry
    if isinstance(entry, Mapping) and isinstance(entry.get("field"), str):
        return str(entry["field"])
    return None


def paths(spec: Mapping[str, Any]) -> dict[str, str]:
    """Canonical field -> the user's path, for the fields read from one path (context
    entries as ``context.<name>``): to name the path in a reason's detail.

    >>> paths({"user_id": "uid", "ts": "kafka", "context": {"os": "device.os"}})
    {'user_id': 'uid', 'context.os': 'device.os'}
    """
    out: dict[str, str] = {}
    for name, entry in spec.items():
        if name in ("context", "values") and isinstance(entry, Mapping) and "field" not in entry:
            for sub, e in entry.items():
                if (p := _path_of(e)) is not None:
                    out[f"{name}.{sub}"] = p
        elif (p := _path_of(entry)) is not None:
            out[name] = p
    return out


def _iso(raw: Any, path: str) -> float:
    if not isinstance(raw, str):
        raise _Reject(R.BAD_TIMESTAMP, f"{path}: {raw!r} is not an ISO-8601 time")
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise _Reject(R.BAD_TIMESTAMP, f"{path}: {raw[:64]!r} is not an ISO-8601 time") from None
    if dt.tzinfo is None:  # no offset given: UTC, as Kafka's own timestamps are
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _ts(entry: Any) -> _Read:
    if entry == "kafka":

        def kafka(doc: Any, stamp: int | None) -> Any:
            return stamp / 1000.0 if stamp is not None and stamp >= 0 else time.time()

        return kafka
    if isinstance(entry, str):
        entry = {"field": entry, "unit": "s"}
    path, unit = entry["field"], entry.get("unit", "s")
    read = getter(path)
    if unit == "s":
        return lambda doc, stamp: read(doc)
    if unit == "iso8601":
        return lambda doc, stamp: _iso(read(doc), path)

    def millis(doc: Any, stamp: int | None) -> Any:
        v = read(doc)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _Reject(R.BAD_TIMESTAMP, f"{path}: {v!r} is not a time in milliseconds")
        return v / 1000.0

    return millis


def _label(entry: Any) -> _Read:
    if isinstance(entry, str):
        read = getter(entry)
        return lambda doc, stamp: read(doc)
    path = entry["field"]
    read = getter(path)
    pos = frozenset(_keyed(v) for v in entry["positive"])
    neg = None if entry.get("negative") is None else frozenset(map(_keyed, entry["negative"]))

    def label(doc: Any, stamp: int | None) -> int:
        v = read(doc)
        try:
            k = _keyed(v)
            if k in pos:
                return 1
            if neg is None or k in neg:
                return 0
        except TypeError:  # a list or an object: no value of either set
            pass
        raise _Reject(R.OUT_OF_RANGE, f"{path}: {str(v)[:64]!r} is neither positive nor negative")

    return label


def _keyed(v: Any) -> tuple[type, Any]:
    """A set key that keeps ``1``, ``True`` and ``"1"`` apart (YAML's and the event's)."""
    return (bool if isinstance(v, bool) else float if isinstance(v, int | float) else type(v), v)


def _context(entry: Mapping[str, Any]) -> _Read:
    reads: list[tuple[str, str, Callable[[Any], Any], str]] = []
    for name, e in entry.items():
        path, typ = (e, "auto") if isinstance(e, str) else (e["field"], e.get("type", "auto"))
        reads.append((name, path, getter(path, default=_ABSENT), typ))

    def context(doc: Any, stamp: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, path, read, typ in reads:
            v = read(doc)
            if v is _ABSENT or v is None:
                continue
            if typ == "numeric":
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise _Reject(R.WRONG_TYPE, f"{path}: context {name} must be a number")
                v = float(v)
            elif typ == "categorical":
                if not isinstance(v, str | int | bool) and not isinstance(v, float):
                    raise _Reject(R.WRONG_TYPE, f"{path}: context {name} must be a scalar")
                v = str(v)
            out[name] = v
        return out

    return context


def _values(entry: Mapping[str, Any]) -> _Read:
    reads = [(ch, getter(p)) for ch, p in entry.items()]
    return lambda doc, stamp: {ch: read(doc) for ch, read in reads}


def _plain(path: str, optional: bool) -> _Read:
    read = getter(path, default=_ABSENT) if optional else getter(path)
    return lambda doc, stamp: read(doc)


def compile_mapping(
    spec: Mapping[str, Any], fields: Sequence[str], optional: Sequence[str] = ()
) -> Transform:
    """The transform of ``spec`` (see the module) for a kind whose canonical event has
    ``fields`` (those in ``optional`` may be absent)."""
    readers: list[tuple[str, _Read]] = []
    for name in fields:
        entry = spec.get(name, name)
        if name == "ts":
            read = _ts(entry)
        elif name == "label":
            read = _label(entry)
        elif name == "context" and isinstance(entry, Mapping):
            read = _context(entry)
        elif name == "values" and isinstance(entry, Mapping):
            read = _values(entry)
        else:
            read = _plain(entry, name in optional)
        readers.append((name, read))

    def transform(doc: Any, stamp: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            for name, read in readers:
                v = read(doc, stamp)
                if v is not _ABSENT:
                    out[name] = v
        except Missing as gone:
            raise _Reject(R.MISSING_FIELD, gone.path) from None
        return out

    return transform


def named(rejected_detail: str, where: Mapping[str, str]) -> str:
    """A kind check's detail, which names a canonical field, with the user's path first.

    >>> named("user_id must be a string or integer", {"user_id": "user.id"})
    'user.id: user_id must be a string or integer'
    >>> named("ts=-1 outside [0, 1]", {"ts": "at"}), named("label", {"label": "event"})
    ('at: ts=-1 outside [0, 1]', 'event: label')
    >>> named("volume must be a number", {})
    'volume must be a number'
    """
    head = rejected_detail.split(" ", 1)[0].split("=", 1)[0]
    path = where.get(head)
    return f"{path}: {rejected_detail}" if path is not None else rejected_detail
