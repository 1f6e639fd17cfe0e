"""Structured, quiet-by-default logging (``key=value`` text or JSON lines)."""

from __future__ import annotations

import json
import logging
import sys
import time

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED}


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{ts} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(
            {
                k: v if isinstance(v, int | float | bool | None) else str(v)
                for k, v in _fields(record).items()
            }
        )
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


_CURRENT = ("info", "text")


def current() -> tuple[str, str]:
    """The (level, format) of the last :func:`setup_logging` (for child processes)."""
    return _CURRENT


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once; third-party chatter (kafka) stays at WARNING."""
    global _CURRENT
    _CURRENT = (level, fmt)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python logs every failed connection attempt during an outage, many a second;
    # the daemon reports outages itself (broker probe, readiness), so keep it for debug.
    logging.getLogger("kafka").setLevel(
        logging.WARNING if root.level <= logging.DEBUG else logging.CRITICAL
    )
