"""The demo's live summary: one table refreshed in place on a terminal, lines otherwise.

:class:`Summary` turns successive scrapes of the daemon's ``/metrics`` into one
:class:`Row` per pipeline (rates over the interval, a short history of the smoothed
loss) and the warnings of that interval. A view shows them: :class:`LiveView` (rich)
redraws one table in place; :class:`LineView` prints the same numbers as lines, for
output that is piped or logged (``make run | cat``). :func:`open_view` picks one.
"""

from __future__ import annotations

import math
import os
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from stream_trainer.metrics.scrape import Samples, per_pipeline

TREND_POINTS = 30  # smoothed-loss history in the sparkline (one point per 2 s refresh)
_BLOCKS = "▁▂▃▄▅▆▇█"


@dataclass
class Row:
    name: str
    rate: float  # events consumed per second over the last interval
    trained: float
    loss: float  # last batch's prequential loss (NaN before the first update)
    smoothed: float
    drifts: float
    rejected: float
    lag: float | None  # messages behind the high watermarks; None before it is known
    trend: list[float] = field(default_factory=list)  # smoothed loss, oldest first


def sparkline(values: list[float]) -> str:
    """One block character per value, scaled between their min and max.

    >>> sparkline([1.0, 2.0, 3.0, 2.0])
    '▁▅█▅'
    >>> sparkline([0.5, 0.5]), sparkline([])
    ('▄▄', '')
    """
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ""
    lo, hi = min(finite), max(finite)
    span = hi - lo
    out = []
    for v in values:
        if not math.isfinite(v):
            out.append(" ")
        elif span <= 1e-12 * max(1.0, abs(hi)):
            out.append(_BLOCKS[3])
        else:
            out.append(_BLOCKS[round((v - lo) / span * (len(_BLOCKS) - 1))])
    return "".join(out)


def rejected_by_reason(samples: Samples) -> dict[tuple[str, str], float]:
    """{(pipeline, reason): rejected events} from a scrape."""
    out: dict[tuple[str, str], float] = {}
    for (name, labels), v in samples.items():
        lab = dict(labels)
        if name == "stream_trainer_events_rejected_total" and "reason" in lab:
            key = (lab.get("pipeline", ""), lab["reason"])
            out[key] = out.get(key, 0.0) + v
    return out


def mostly_rejected(consumed: float, rejected: float, by_reason: dict[str, float]) -> str:
    """The summary's warning when at least half of the last interval's events were rejected.

    >>> mostly_rejected(1000, 990, {"duplicate": 990, "bad_json": 0})
    '99% of the last events rejected (duplicate)'
    >>> mostly_rejected(1000, 10, {"duplicate": 10})
    ''
    """
    if consumed <= 0 or rejected < 0.5 * consumed:
        return ""
    reason = max(by_reason, key=by_reason.__getitem__) if by_reason else "unknown"
    return f"{min(1.0, rejected / consumed):.0%} of the last events rejected ({reason})"


class Summary:
    """Successive scrapes -> rows and warnings (differences over each interval)."""

    def __init__(self, log_hint: str = "") -> None:
        self.log_hint = log_hint  # where to look, appended to a warning
        self.prev_t: float | None = None
        self.prev: dict[str, float] = {}
        self.prev_rejected: dict[str, float] = {}
        self.prev_reasons: dict[tuple[str, str], float] = {}
        self.trends: dict[str, deque[float]] = {}

    def update(self, s: Samples, now: float) -> tuple[list[Row], list[str]]:
        consumed = per_pipeline(s, "stream_trainer_events_consumed_total")
        trained = per_pipeline(s, "stream_trainer_events_trained_total")
        loss = per_pipeline(s, "stream_trainer_loss", window="batch")
        smooth = per_pipeline(s, "stream_trainer_loss", window="smoothed")
        drifts = per_pipeline(s, "stream_trainer_drift_detected_total")
        rejected = per_pipeline(s, "stream_trainer_events_rejected_total")
        lag = per_pipeline(s, "stream_trainer_consumer_lag")
        reasons = rejected_by_reason(s)
        dt = max(1e-9, now - self.prev_t) if self.prev_t is not None else None
        rows, warnings = [], []
        for name in sorted(consumed):
            n = trained.get(name, 0.0)
            rate = (consumed[name] - self.prev.get(name, consumed[name])) / dt if dt else 0.0
            trend = self.trends.setdefault(name, deque(maxlen=TREND_POINTS))
            if n:
                trend.append(smooth.get(name, math.nan))
            rows.append(
                Row(name, rate, n,
                    loss.get(name, math.nan) if n else math.nan,
                    smooth.get(name, math.nan) if n else math.nan,
                    drifts.get(name, 0.0), rejected.get(name, 0.0), lag.get(name),
                    list(trend))
            )  # fmt: skip
            warning = mostly_rejected(
                consumed[name] - self.prev.get(name, 0.0),
                rejected.get(name, 0.0) - self.prev_rejected.get(name, 0.0),
                {r: v - self.prev_reasons.get((name, r), 0.0)
                 for (p, r), v in reasons.items() if p == name},
            )  # fmt: skip
            if warning:
                hint = f"; see {self.log_hint}" if self.log_hint else ""
                warnings.append(f"! {name}: {warning}{hint}")
        self.prev, self.prev_t = consumed, now
        self.prev_rejected, self.prev_reasons = rejected, reasons
        return rows, warnings


class View(Protocol):
    def waiting(self, message: str) -> None: ...

    def show(self, rows: list[Row], warnings: list[str]) -> None: ...

    def close(self) -> None: ...


class LineView:
    """Today's lines: a header every ten intervals, a row per pipeline, then warnings."""

    HEADER = (
        f"{'pipeline':<9} {'events/s':>9} {'trained':>10} {'loss':>9} "
        f"{'smoothed':>9} {'drifts':>6} {'rejected':>8}"
    )

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.shown = 0

    def waiting(self, message: str) -> None:
        pass  # lines only when there are numbers: a log stays greppable

    def show(self, rows: list[Row], warnings: list[str]) -> None:
        if self.shown % 10 == 0:
            self.say(self.HEADER)
        for r in rows:
            losses = f"{r.loss:>9.4f} {r.smoothed:>9.4f}" if r.trained else f"{'-':>9} {'-':>9}"
            self.say(
                f"{r.name:<9} {r.rate:>9.0f} {r.trained:>10.0f} {losses} "
                f"{r.drifts:>6.0f} {r.rejected:>8.0f}"
            )
        for w in warnings:
            self.say(w)
        self.shown += 1

    def close(self) -> None:
        pass


class LiveView:
    """One table, redrawn in place (rich's ``Live``); warnings under it."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream) if stream is not None else Console()
        # auto_refresh off: we redraw when there are new numbers, no thread of its own
        self.live = Live(console=self.console, auto_refresh=False, redirect_stderr=False)
        self.live.start()

    def waiting(self, message: str) -> None:
        from rich.text import Text

        self.live.update(Text(message, style="dim"), refresh=True)

    def show(self, rows: list[Row], warnings: list[str]) -> None:
        self.live.update(render(rows, warnings), refresh=True)

    def close(self) -> None:
        self.live.stop()


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def render(rows: list[Row], warnings: list[str]) -> Any:
    """The table (and warnings) as one rich renderable."""
    from rich.console import Group, JustifyMethod
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="stream-trainer demo (every 2 s; loss trend: smoothed loss, last minute)",
        title_justify="left",
    )
    columns: list[tuple[str, JustifyMethod]]
    columns = [("pipeline", "left"), ("events/s", "right"), ("trained", "right"),
               ("loss", "right"), ("smoothed", "right"),
               ("loss trend", "left"),
               ("drifts", "right"), ("rejected", "right"), ("lag", "right")]  # fmt: skip
    for col, justify in columns:
        table.add_column(col, justify=justify, no_wrap=True)
    for r in rows:
        table.add_row(
            r.name,
            _num(r.rate, ",.0f"),
            _num(r.trained, ",.0f"),
            _num(r.loss, ".4f"),
            _num(r.smoothed, ".4f"),
            Text(sparkline(r.trend), style="cyan"),
            _num(r.drifts, ",.0f"),
            Text(_num(r.rejected, ",.0f"), style="red" if r.rejected else ""),
            _num(r.lag, ",.0f"),
        )
    parts: list[Any] = [table]
    parts.extend(Text(w, style="bold yellow") for w in warnings)
    return Group(*parts)


def open_view(say: Callable[[str], None], stream: IO[str] | None = None) -> View:
    """A live table when ``stream`` (stdout) is a terminal that can move its cursor,
    lines otherwise."""
    out = stream if stream is not None else sys.stdout
    if out.isatty() and os.environ.get("TERM", "") not in ("", "dumb"):
        return LiveView(stream)
    return LineView(say)
