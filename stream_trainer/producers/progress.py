"""A small progress reporter for long runs: a live line on a terminal, sparse lines in logs."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        every_s: float = 2.0,
        stream: IO[str] | None = None,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.every_s = label, total, every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.start = self.last = time.monotonic()
        self.done = 0

    def _line(self) -> str:
        elapsed = max(1e-9, time.monotonic() - self.start)
        rate = self.done / elapsed
        if self.total:
            pct = 100.0 * self.done / self.total
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            return (
                f"{self.label}: {self.done:,}/{self.total:,} ({pct:5.1f}%) "
                f"{rate:,.0f}/s eta {eta:,.0f}s"
            )
        return f"{self.label}: {self.done:,} {rate:,.0f}/s"

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self.last >= (0.2 if self.tty else self.every_s):
            self.last = now
            end = "\r" if self.tty else "\n"
            self.stream.write(self._line() + end)
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write(self._line() + " done\n")
            self.stream.flush()
