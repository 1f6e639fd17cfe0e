"""Dotted paths into a decoded event: how a config names a field of the user's own
events (``user.id``, ``device.os``, ``items.0.sku``). Pure, and cheap on the hot path: a
path is split once, when the pipeline is built, and read with plain indexing.

>>> read = getter("user.id")
>>> read({"user": {"id": 7}})
7
>>> getter("items.1")({"items": ["a", "b"]})
'b'
>>> getter("user.id")({"user": {}})
Traceback (most recent call last):
...
stream_trainer.events.paths.Missing: user.id
>>> getter("user.id")({"user": 3})
Traceback (most recent call last):
...
stream_trainer.events.paths.Missing: user.id
>>> getter("price")({"price": 1.5}), getter("price", default=0.0)({})
(1.5, 0.0)
>>> split("a..b")
Traceback (most recent call last):
...
ValueError: 'a..b' is not a dotted path: empty part
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

_REQUIRED: Any = object()


class Missing(LookupError):
    """A path that leads nowhere in this event; ``str()`` is the path, for the reason's
    detail and the dead letter."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path

    def __str__(self) -> str:
        return self.path


def split(path: str) -> tuple[str | int, ...]:
    """``"a.b.0"`` -> ``("a", "b", 0)``: parts that are digits index lists."""
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"{path!r} is not a dotted path: empty part")
    return tuple(int(p) if p.isdigit() else p for p in parts)


def getter(path: str, *, default: Any = _REQUIRED) -> Callable[[Any], Any]:
    """A function that reads ``path`` from an event; it raises :class:`Missing` when the
    path is absent (or returns ``default`` when one is given)."""
    parts = split(path)
    required = default is _REQUIRED

    if len(parts) == 1 and isinstance(parts[0], str):  # the common case, one lookup
        key = parts[0]

        def read_one(doc: Any) -> Any:
            try:
                return doc[key]
            except (KeyError, TypeError, IndexError):
                if required:
                    raise Missing(path) from None
                return default

        return read_one

    def read(doc: Any) -> Any:
        node = doc
        try:
            for p in parts:
                if isinstance(p, int) and not isinstance(node, list):
                    node = node[str(p)]
                else:
                    node = node[p]
        except (KeyError, TypeError, IndexError):
            if required:
                raise Missing(path) from None
            return default
        return node

    return read
