"""Event files: JSON-lines read as raw messages. Pure (no Kafka), so the offline
evaluation and the producer share it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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
