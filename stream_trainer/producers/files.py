"""Event files: JSON-lines read as raw messages. Pure (no Kafka), so the offline
evaluation and the producer share it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream_trainer.errors import StreamTrainerError


def read_jsonl(path: str | Path) -> Iterator[bytes]:
    """Lines of a JSON-lines file, as-is (blank lines skipped; no parsing: bad events are
    the consumer's to reject)."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the generator
    except OSError as err:
        raise StreamTrainerError(f"cannot read {path}: {err.strerror}") from None
    with fh:
        for line in fh:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def pipeline_lines(
    lines: Iterator[bytes],
    wire: dict[str, Any] | None,
    key_path: str | None,
    fmt: str,
    schema_id: int | None = None,
) -> Iterator[tuple[bytes | None, bytes]]:
    """``produce --from-file --config``: each JSON line as ``(key, value)``: the key read at
    the pipeline's key path (None where absent), the value as it is (``fmt`` json) or
    encoded as Avro with the pipeline's schema (``fmt`` avro: plain, or Confluent's
    framing with ``schema_id``, by default the highest id of the schemas folder). A line
    that is not JSON, or not of the schema, is an error naming its line number."""
    from stream_trainer.events import avro
    from stream_trainer.events.paths import getter

    read_key = getter(key_path, default=None) if key_path else None
    encode: Any = None
    if fmt == "avro":
        spec = (wire or {}).get("avro")
        if not spec:
            raise StreamTrainerError("--format avro needs a pipeline with format: avro")
        if spec.get("schemas"):
            schemas = avro.load_schemas(spec["schemas"])
            sid = max(schemas) if schema_id is None else schema_id
            if sid not in schemas:
                raise StreamTrainerError(f"--schema-id {sid}: no {sid}.avsc in {spec['schemas']}")
            schema: Any = schemas[sid]
        else:
            schema, sid = avro.load_schema(spec["schema"]), None
        encode = lambda doc: avro.encode(doc, schema, schema_id=sid)  # noqa: E731
    for n, line in enumerate(lines, 1):
        doc: Any = None
        if read_key is not None or encode is not None:
            try:
                doc = json.loads(line)
            except ValueError as err:
                raise StreamTrainerError(f"line {n} is not JSON: {err}") from None
        key = read_key(doc) if read_key is not None and isinstance(doc, dict) else None
        value = line
        if encode is not None:
            try:
                value = encode(doc)
            except Exception as err:  # noqa: BLE001 - fastavro's many errors on a bad datum
                raise StreamTrainerError(f"line {n} does not fit the Avro schema: {err}") from None
        yield (None if key is None else str(key).encode()), value
