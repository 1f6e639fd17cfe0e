"""The tabular kind's schema: the fields a pipeline declares, read by dotted path from
any JSON object, checked with the path of the field that failed. Pure.

The declaration travels to the ingest workers as the decoder's channels: a tuple of
``name=value`` strings (:meth:`TabularSpec.channels`), so the workers build the same
check from the same plain data.

>>> spec = TabularSpec("multiclass", "kind", numeric=("size.w",), categorical=("os",),
...                    classes=("cat", "dog"))
>>> check = spec.check()
>>> check({"size": {"w": 3}, "os": "ios", "kind": "dog"})
{'x': [3.0], 'c': ['ios'], 'y': 1, 'ts': None, 'key': None}
>>> TabularSpec.from_channels(spec.channels()) == spec
True
>>> try:
...     check({"size": {"w": 3}, "os": "ios", "kind": "cow"})
... except Exception as err:
...     print(err.rejected)
Rejected(reason='out_of_range', detail="kind='cow' is not one of the classes")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stream_trainer.events import reasons as R
from stream_trainer.events.decode import MAX_ABS, MAX_ID_CHARS, Check, _Reject
from stream_trainer.events.paths import Missing, getter

TASKS = ("binary", "multiclass", "regression")


@dataclass(frozen=True)
class TabularSpec:
    """What a tabular pipeline reads from its events (see features/tabular.py for the
    settings a user writes)."""

    task: str
    target: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    auto: bool = False  # every scalar field but the target, ts and key
    classes: tuple[str, ...] = ()  # multiclass: listed (else learned as they appear)
    positive: tuple[str, ...] = ()  # binary from values: these are 1, the others 0
    ts: str | None = None
    key: str | None = None

    def channels(self) -> tuple[str, ...]:
        out = [f"task={self.task}", f"target={self.target}"]
        out += [f"num={p}" for p in self.numeric] + [f"cat={p}" for p in self.categorical]
        out += ["auto=1"] if self.auto else []
        out += [f"class={c}" for c in self.classes] + [f"positive={v}" for v in self.positive]
        out += [f"ts={self.ts}"] if self.ts else []
        out += [f"key={self.key}"] if self.key else []
        return tuple(out)

    @classmethod
    def from_channels(cls, channels: Sequence[str]) -> TabularSpec:
        one: dict[str, str] = {}
        many: dict[str, list[str]] = {"num": [], "cat": [], "class": [], "positive": []}
        for ch in channels:
            name, _, value = ch.partition("=")
            if name in many:
                many[name].append(value)
            else:
                one[name] = value
        return cls(
            task=one.get("task", "regression"),
            target=one.get("target", "target"),
            numeric=tuple(many["num"]),
            categorical=tuple(many["cat"]),
            auto="auto" in one,
            classes=tuple(many["class"]),
            positive=tuple(many["positive"]),
            ts=one.get("ts"),
            key=one.get("key"),
        )

    def check(self) -> Check:
        """The check of one parsed object: the event the featurizer reads, or a refusal
        (``_Reject``) whose detail starts with the path of the field that failed."""
        nums = [(p, getter(p)) for p in self.numeric]
        cats = [(p, getter(p)) for p in self.categorical]
        target = _target(self)
        ts_read = getter(self.ts, default=None) if self.ts else None
        key_read = getter(self.key) if self.key else None
        skip = {p for p in (self.target, self.ts, self.key) if p}
        auto = self.auto

        def check(doc: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            if auto:
                out["n"], out["cat"] = _flatten(doc, skip)
            else:
                out["x"] = [_number(p, _need(read, doc, p)) for p, read in nums]
                out["c"] = [_token(p, _need(read, doc, p)) for p, read in cats]
            out["y"] = target(doc)
            out["ts"] = _ts(self.ts, ts_read(doc)) if ts_read is not None else None
            out["key"] = _token(self.key, _need(key_read, doc, self.key)) if key_read else None
            return out

        return check


def _need(read: Callable[[Any], Any], doc: Any, path: str | None) -> Any:
    try:
        return read(doc)
    except Missing:
        raise _Reject(R.MISSING_FIELD, str(path)) from None


def _number(path: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _Reject(R.WRONG_TYPE, f"{path} must be a number, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v):
        raise _Reject(R.NON_FINITE, path)
    if not -MAX_ABS <= v <= MAX_ABS:
        raise _Reject(R.OUT_OF_RANGE, f"{path}={v:g} outside [{-MAX_ABS:g}, {MAX_ABS:g}]")
    return v


def _token(path: str | None, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | int) or (isinstance(v, float) and math.isfinite(v)):
        s = str(v)
        if len(s) > MAX_ID_CHARS:
            raise _Reject(R.OUT_OF_RANGE, f"{path} has more than {MAX_ID_CHARS} characters")
        return s
    raise _Reject(R.WRONG_TYPE, f"{path} must be a string, number or boolean")


def _ts(path: str | None, v: Any) -> float | None:
    """Unix seconds, or an ISO-8601 string (``Z`` or an offset), as Unix seconds."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise _Reject(R.BAD_TIMESTAMP, f"{path}={v[:40]!r} is not ISO-8601") from None
    return _number(str(path), v)


def _target(spec: TabularSpec) -> Callable[[dict[str, Any]], Any]:
    read, path = getter(spec.target), spec.target
    if spec.task == "regression":
        return lambda doc: _number(path, _need(read, doc, path))
    if spec.task == "binary":
        positive = frozenset(spec.positive)

        def binary(doc: dict[str, Any]) -> int:
            v = _need(read, doc, path)
            if positive:
                return int(_token(path, v) in positive)
            if v in (0, 1):  # 0/1, false/true
                return int(v)
            raise _Reject(R.WRONG_TYPE, f"{path} must be 0 or 1 (or list its positive values)")

        return binary
    index = {c: i for i, c in enumerate(spec.classes)}

    def multiclass(doc: dict[str, Any]) -> int | str:
        label = _token(path, _need(read, doc, path))
        if not index:
            return label  # learned as they appear (the featurizer numbers them)
        i = index.get(label)
        if i is None:
            raise _Reject(R.OUT_OF_RANGE, f"{path}={label!r} is not one of the classes")
        return i

    return multiclass


def _flatten(doc: dict[str, Any], skip: set[str]) -> tuple[dict[str, float], dict[str, str]]:
    """``features: auto``: every scalar field by its dotted path, numbers apart from
    strings and booleans (lists are left out)."""
    nums: dict[str, float] = {}
    cats: dict[str, str] = {}
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:
        prefix, node = stack.pop()
        for k, v in node.items():
            path = f"{prefix}{k}"
            if path in skip:
                continue
            if isinstance(v, dict):
                stack.append((path + ".", v))
            elif isinstance(v, int | float) and not isinstance(v, bool):
                nums[path] = _number(path, v)
            elif isinstance(v, str | bool):
                cats[path] = _token(path, v)
    return nums, cats


def tabular_schema(channels: Sequence[str] = ()) -> Check:
    """Tabular: the declared fields (``channels``: :meth:`TabularSpec.channels`)."""
    return TabularSpec.from_channels(channels).check()


def tabular_fast(channels: Sequence[str] = ()) -> tuple[Any, Callable[[Any], Any]]:
    """A whole poll's fast path: msgspec parses (in C, into plain dicts and lists), the
    same check reads the fields. What it refuses (a NaN, bad UTF-8, a refused field)
    goes to :func:`tabular_schema`'s decoder for the reason, so only speed differs."""
    import msgspec

    check = tabular_schema(channels)

    def convert(doc: Any) -> dict[str, Any] | None:
        if type(doc) is not dict:
            return None
        try:
            return check(doc)
        except _Reject:
            return None

    return msgspec.json.Decoder(), convert
