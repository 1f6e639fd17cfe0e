"""``stream-trainer report``: a PNG of loss over time per pipeline, with drift markers.

History comes from Prometheus (``--prometheus URL``, a range query) or from the JSON
lines the daemon writes when ``history.path`` is set. The series: the smoothed and
per-batch prequential loss, and the times at which drift was detected.
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stream_trainer.errors import StreamTrainerError


@dataclass
class Series:
    """One pipeline's history: (unix time, value) points and drift times."""

    smoothed: list[tuple[float, float]] = field(default_factory=list)
    batch: list[tuple[float, float]] = field(default_factory=list)
    drifts: list[float] = field(default_factory=list)


def from_history(path: str | Path) -> dict[str, Series]:
    """Read the daemon's history file (one JSON object per pipeline per interval)."""
    out: dict[str, Series] = defaultdict(Series)
    last_drifts: dict[str, float] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise StreamTrainerError(f"cannot read history file {path}: {err.strerror}") from None
    for line in lines:
        try:
            doc = json.loads(line)
            name, ts = doc["pipeline"], float(doc["ts"])
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line of a running daemon
        s = out[name]
        for key, series in (("loss_smoothed", s.smoothed), ("loss_batch", s.batch)):
            v = doc.get(key)
            if isinstance(v, int | float) and math.isfinite(v):
                series.append((ts, float(v)))
        drifts = float(doc.get("drifts", 0))
        if name in last_drifts and drifts > last_drifts[name]:
            s.drifts.append(ts)
        last_drifts[name] = drifts
    if not out:
        raise StreamTrainerError(f"{path} holds no history yet (is history.path set?)")
    return dict(out)


def _query_range(base: str, query: str, start: float, end: float, step: float) -> list[dict]:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    url = f"{base.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            doc = json.load(resp)
    except OSError as err:
        raise StreamTrainerError(f"cannot query Prometheus at {base}: {err}") from None
    if doc.get("status") != "success":
        raise StreamTrainerError(f"Prometheus refused {query!r}: {doc.get('error')}")
    return doc["data"]["result"]


def from_prometheus(
    base: str, minutes: float = 60.0, end: float | None = None
) -> dict[str, Series]:
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, minutes * 60 / 1000)
    out: dict[str, Series] = defaultdict(Series)
    for window, attr in (("smoothed", "smoothed"), ("batch", "batch")):
        q = f'stream_trainer_loss{{window="{window}"}}'
        for r in _query_range(base, q, start, end, step):
            pts = [(float(t), float(v)) for t, v in r["values"] if math.isfinite(float(v))]
            getattr(out[r["metric"]["pipeline"]], attr).extend(pts)
    q = "sum by (pipeline) (stream_trainer_drift_detected_total)"
    for r in _query_range(base, q, start, end, step):
        prev = None
        for t, v in r["values"]:
            if prev is not None and float(v) > prev:
                out[r["metric"]["pipeline"]].drifts.append(float(t))
            prev = float(v)
    if not out:
        raise StreamTrainerError(
            f"Prometheus at {base} has no stream_trainer_loss in the last {minutes:g} minutes"
        )
    return dict(out)


def draw(history: dict[str, Series], out: str | Path, title: str = "Prequential loss") -> Path:
    """One panel per pipeline: smoothed loss, per-batch loss (faint), red drift lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    names = sorted(history)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(10, 2.6 * len(names)), squeeze=False, sharex=True
    )
    when = lambda ts: datetime.fromtimestamp(ts, tz=UTC)  # noqa: E731
    for ax, name in zip(axes[:, 0], names, strict=True):
        s = history[name]
        if s.batch:
            ax.plot(
                [when(t) for t, _ in s.batch],
                [v for _, v in s.batch],
                lw=0.6,
                alpha=0.35,
                color="tab:blue",
                label="batch",
            )
        if s.smoothed:
            ax.plot(
                [when(t) for t, _ in s.smoothed],
                [v for _, v in s.smoothed],
                lw=1.8,
                color="tab:blue",
                label="smoothed",
            )
        for i, t in enumerate(s.drifts):
            ax.axvline(
                when(t),
                color="tab:red",
                lw=1.2,
                ls="--",
                label="drift detected" if i == 0 else None,
            )
        ax.set_title(name, loc="left", fontsize=10)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[-1, 0].xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(out)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
