"""Avro message values (fastavro): plain Avro binary with one schema, or Confluent's
framing (a zero magic byte, the schema id as 4 big-endian bytes, then the Avro binary)
with the schemas by id. Pure: never raises on any input; bytes that are not Avro for
their schema are a :class:`~.decode.Rejected` (``not_avro``; an id with no schema:
``unknown_schema``).

>>> schema = {"type": "record", "name": "E", "fields": [{"name": "x", "type": "long"}]}
>>> read = reader(schema=schema)
>>> read(encode({"x": 3}, schema))
{'x': 3}
>>> read(b"\\x80")
Rejected(reason='not_avro', detail='not Avro for the schema: IndexError')
>>> confluent = reader(schemas={7: schema})
>>> confluent(encode({"x": 3}, schema, schema_id=7))
{'x': 3}
>>> confluent(encode({"x": 3}, schema, schema_id=8))
Rejected(reason='unknown_schema', detail='schema id 8')
>>> confluent(b"{}")
Rejected(reason='not_avro', detail='magic byte 0x7b, not 0 (Confluent framing)')
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

from stream_trainer.events import reasons as R
from stream_trainer.events.decode import Rejected

Read = Callable[[bytes], Any]  # a value -> the decoded datum, or a Rejected


def load_schema(path: str | Path) -> Any:
    """A parsed schema from an ``.avsc`` file; ValueError saying what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror}") from None
    try:
        return parse_schema(json.loads(text))
    except Exception as err:  # noqa: BLE001 - JSON or schema errors, of many types
        raise ValueError(f"{path} is not an Avro schema: {err}") from None


def load_schemas(folder: str | Path) -> dict[int, Any]:
    """``<id>.avsc`` files of a folder, by id; ValueError if there are none."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder} is not a folder")
    out = {int(p.stem): load_schema(p) for p in root.glob("*.avsc") if p.stem.isdigit()}
    if not out:
        raise ValueError(f"{folder} has no <id>.avsc schema files (1.avsc, 2.avsc, ...)")
    return out


def _datum(schema: Any, payload: bytes) -> Any:
    fo = io.BytesIO(payload)
    try:
        datum = schemaless_reader(fo, schema, None)
    except Exception as err:  # noqa: BLE001 - fastavro raises many types on bad bytes
        return Rejected(R.NOT_AVRO, f"not Avro for the schema: {type(err).__name__}")
    left = len(payload) - fo.tell()
    if left:
        return Rejected(R.NOT_AVRO, f"{left} bytes after the Avro datum")
    return datum


def reader(*, schema: Any = None, schemas: Mapping[int, Any] | None = None) -> Read:
    """Plain Avro with ``schema``, or Confluent framing with ``schemas`` by id (each a
    parsed schema, or a dict that parse_schema takes)."""
    if schemas is None:
        parsed = parse_schema(schema)
        return lambda value: _datum(parsed, value)
    by_id = {i: parse_schema(s) for i, s in schemas.items()}

    def confluent(value: bytes) -> Any:
        if len(value) < 5 or value[0] != 0:
            return Rejected(R.NOT_AVRO, f"magic byte {value[0]:#04x}, not 0 (Confluent framing)"
                            if value else "empty")  # fmt: skip
        sid = int.from_bytes(value[1:5], "big")
        schema = by_id.get(sid)
        if schema is None:
            return Rejected(R.UNKNOWN_SCHEMA, f"schema id {sid}")
        return _datum(schema, value[5:])

    return confluent


def encode(datum: Any, schema: Any, schema_id: int | None = None) -> bytes:
    """``datum`` as Avro binary (with Confluent's framing when ``schema_id`` is given):
    for ``produce --format avro`` and the tests."""
    fo = io.BytesIO()
    if schema_id is not None:
        fo.write(b"\x00" + schema_id.to_bytes(4, "big"))
    schemaless_writer(fo, parse_schema(schema), datum)
    return fo.getvalue()
