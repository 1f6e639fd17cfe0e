"""A picture of the Grafana dashboard's main panels, from real scrapes of a daemon's /metrics.

Two steps, so that the scrape can run beside a demo and the drawing afterwards:

    .venv/bin/python scripts/dashboard_png.py scrape --url http://127.0.0.1:9108/metrics \
        --seconds 70 --out /tmp/scrapes.jsonl
    .venv/bin/python scripts/dashboard_png.py draw /tmp/scrapes.jsonl --out docs/img/dashboard.png

``draw`` takes the panel titles from deploy/grafana/dashboards/stream-trainer.json and
evaluates each panel's query the way Prometheus would over the scrapes (a gauge as it is;
``rate`` as the increase between scrapes over their interval; ``histogram_quantile``
over the buckets' increase in the last ``--window`` seconds). It is a rendering for the
docs, not a Grafana: Grafana itself needs no picture to run.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "stream-trainer.json"

Scrape = dict[str, float]  # 'name{label="v",...}' -> value
Series = dict[str, tuple[np.ndarray, np.ndarray]]  # legend -> (seconds, values)


def scrape(url: str, seconds: float, every: float, out: Path) -> int:
    """Read ``url`` every ``every`` s for ``seconds`` s; one JSON line per scrape."""
    n, end = 0, time.monotonic() + seconds
    with out.open("w") as f:
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                text = ""  # not up yet (or gone): no line
            if text:
                f.write(json.dumps({"t": time.time(), "samples": parse(text)}) + "\n")
                n += 1
            time.sleep(max(0.0, every - (time.monotonic() - t0)))
    return n


def parse(text: str) -> Scrape:
    """One scrape (Prometheus' text format) as ``{'name{label="v",...}': value}``."""
    samples: Scrape = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def _parse(key: str) -> tuple[str, dict[str, str]]:
    name, _, rest = key.partition("{")
    labels = {}
    for part in filter(None, rest.rstrip("}").split('",')):
        k, _, v = part.partition("=")
        labels[k] = v.strip('"')
    return name, labels


class Scrapes:
    def __init__(self, path: Path) -> None:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if len(rows) < 3:
            raise SystemExit(f"{path}: {len(rows)} scrapes; need at least 3")
        self.wall = np.array([r["t"] for r in rows])
        self.t = self.wall - self.wall[0]
        self.rows = [r["samples"] for r in rows]

    def series(self, name: str, **match: str) -> dict[tuple[tuple[str, str], ...], np.ndarray]:
        """Every series of ``name`` whose labels include ``match``: labels -> values."""
        out: dict[tuple[tuple[str, str], ...], np.ndarray] = {}
        keys = {k for r in self.rows for k in r if k.startswith(name + "{")}
        for key in sorted(keys):
            metric, labels = _parse(key)
            if metric == name and all(labels.get(k) == v for k, v in match.items()):
                out[tuple(sorted(labels.items()))] = np.array(
                    [r.get(key, np.nan) for r in self.rows]
                )
        return out

    def gauge(self, name: str, legend: str = "{pipeline}", **match: str) -> Series:
        return {
            legend.format(**dict(k)): (self.t, v) for k, v in self.series(name, **match).items()
        }

    def rate(self, name: str, legend: str = "{pipeline}", **match: str) -> Series:
        summed: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(self.t)))
        for k, v in self.series(name, **match).items():
            summed[legend.format(**dict(k))] += np.nan_to_num(v)
        dt = np.diff(self.t)
        return {k: (self.t[1:], np.maximum(np.diff(v), 0) / dt) for k, v in summed.items()}

    def quantile(self, name: str, q: float, window: float) -> Series:
        """histogram_quantile(q, increase of the buckets over ``window`` s), per pipeline."""
        by_pipe: dict[str, dict[float, np.ndarray]] = defaultdict(dict)
        for k, v in self.series(name + "_bucket").items():
            labels = dict(k)
            by_pipe[labels["pipeline"]][float(labels["le"])] = np.nan_to_num(v)
        out: Series = {}
        for pipe, buckets in by_pipe.items():
            les = sorted(buckets)
            counts = np.array([buckets[le] for le in les])  # cumulative, (buckets, scrapes)
            ts, vals = [], []
            for i, t in enumerate(self.t):
                j = int(np.searchsorted(self.t, t - window))
                if j >= i:
                    continue
                inc = counts[:, i] - counts[:, j]
                if inc[-1] <= 0:
                    continue
                rank = q * inc[-1]
                b = int(np.searchsorted(inc, rank))
                lo = les[b - 1] if b > 0 else 0.0
                hi = les[b] if np.isfinite(les[b]) else lo
                below = inc[b - 1] if b > 0 else 0.0
                frac = (rank - below) / max(inc[b] - below, 1e-12)
                ts.append(t)
                vals.append(lo + (hi - lo) * frac)
            out[f"{pipe} p{int(q * 100)}"] = (np.array(ts), np.array(vals))
        return out


# The dashboard's panels this picture draws: title (as in the JSON) -> its queries.
def panels(s: Scrapes, window: float) -> dict[str, Callable[[], Series]]:
    return {
        "Prequential loss over time (smoothed)": lambda: s.gauge(
            "stream_trainer_loss", window="smoothed"
        ),
        "Events/s and updates/s": lambda: s.rate("stream_trainer_events_trained_total"),
        "Event-to-update latency (freshness) p50 / p99": lambda: {
            **s.quantile("stream_trainer_event_to_update_seconds", 0.5, window),
            **s.quantile("stream_trainer_event_to_update_seconds", 0.99, window),
        },
        "Consumer lag": lambda: s.gauge(
            "stream_trainer_consumer_lag", legend="{pipeline} {topic}/{partition}"
        ),
        "Drift detections (per 5m)": lambda: {  # the run is shorter than 5 m: since its start
            k: (t, np.nan_to_num(v) - np.nan_to_num(v)[0])
            for k, (t, v) in s.gauge("stream_trainer_drift_detected_total").items()
        },
        "Checkpoint age": lambda: {
            k: (t, s.wall - v)  # time() - the last durable checkpoint's time
            for k, (t, v) in s.gauge("stream_trainer_last_checkpoint_timestamp_seconds").items()
        },
        "Update duration p50 / p99": lambda: {
            **s.quantile("stream_trainer_update_seconds", 0.5, window),
            **s.quantile("stream_trainer_update_seconds", 0.99, window),
        },
        "Model version: trained vs served": lambda: {
            **s.gauge("stream_trainer_model_version", legend="{pipeline} trained"),
            **s.gauge("stream_trainer_served_model_version", legend="{pipeline} served"),
        },
        "Delayed labels: impressions pending": lambda: s.gauge(
            "stream_trainer_impressions_pending"
        ),
    }


def draw(src: Path, out: Path, window: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = Scrapes(src)
    titles = {p["title"] for p in json.loads(DASHBOARD.read_text())["panels"]}
    chosen = {k: f for k, f in panels(s, window).items() if k in titles}
    missing = set(panels(s, window)) - titles
    if missing:
        raise SystemExit(f"panels no longer in {DASHBOARD.name}: {sorted(missing)}")
    cols = 3
    rows = -(-len(chosen) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(13, 3.0 * rows), dpi=70)
    for ax, (title, series) in zip(axes.flat, chosen.items(), strict=False):
        for legend, (t, v) in sorted(series().items()):
            ax.plot(t, v, lw=1.2, label=legend)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("seconds", fontsize=7)
        if ax.lines:
            ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[len(chosen) :]:
        ax.axis("off")
    fig.suptitle(
        "stream-trainer dashboard panels, from scrapes of a demo run's /metrics", fontsize=11
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("scrape", help="sample /metrics into a JSON-lines file")
    sc.add_argument("--url", default="http://127.0.0.1:9108/metrics")
    sc.add_argument("--seconds", type=float, default=70.0)
    sc.add_argument("--every", type=float, default=2.0)
    sc.add_argument("--out", type=Path, required=True)
    dr = sub.add_parser("draw", help="draw the panels from a scrape file")
    dr.add_argument("scrapes", type=Path)
    dr.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    dr.add_argument("--window", type=float, default=20.0, help="seconds a quantile looks back")
    a = ap.parse_args()
    if a.cmd == "scrape":
        print(f"{scrape(a.url, a.seconds, a.every, a.out)} scrapes in {a.out}")
    else:
        print(f"wrote {draw(a.scrapes, a.out, a.window)}")


if __name__ == "__main__":
    main()
