"""`make bench-serving`'s client of the daemon under test (scripts/bench_serving.py runs
it): the /predict load (request bodies, a sequential keep-alive client, waiting until
serving answers), and what it reads of the daemon's /metrics (trained and produced events,
lag, the train-to-serve histogram's quantiles, the CPU of the daemon's process tree).
"""

from __future__ import annotations

import http.client
import json
import math
import time
from pathlib import Path
from typing import Any

from bench_daemon import proc_cpu_s
from bench_runs import encode

from stream_trainer.metrics.scrape import Samples, per_pipeline, scrape
from stream_trainer.producers.generators import make_generator

PIPELINE = "clicks"


# ---- reading the daemon's metrics ------------------------------------------------------------
def metric(samples: Samples, name: str, **labels: str) -> float:
    return per_pipeline(samples, name, **labels).get(PIPELINE, 0.0)


def produced(samples: Samples) -> float:
    """Events the topic holds: those the daemon read and those it has still to read."""
    consumed = metric(samples, "stream_trainer_events_consumed_total")
    return consumed + metric(samples, "stream_trainer_consumer_lag")


def buckets(samples: Samples, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts of the pipeline: {upper bound: count}."""
    out: dict[float, float] = {}
    for (n, labels), v in samples.items():
        lab = dict(labels)
        if n == f"{name}_bucket" and lab.get("pipeline") == PIPELINE:
            out[float(lab["le"])] = v
    return out


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile``: linear within the bucket that holds the
    quantile (the lowest bucket from 0; +Inf: its lower bound).

    >>> histogram_quantile(0.5, {0.1: 10.0, 0.2: 30.0, math.inf: 30.0})
    0.125
    """
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return math.nan
    rank, lo, below = q * total, 0.0, 0.0
    for b in bounds:
        c = cumulative[b]
        if c >= rank:
            if math.isinf(b):
                return lo
            return lo + (b - lo) * (rank - below) / (c - below) if c > below else b
        lo, below = b, c
    return lo


# ---- the client --------------------------------------------------------------------------
def requests_for(n: int, batch: int) -> list[bytes]:
    """``n`` request bodies: single click events (``batch`` 1) or lists of ``batch``."""
    events = [
        {k: v for k, v in ev.items() if k != "label"}
        for ev in make_generator("clicks", seed=11, count=max(n, 1) * batch)
    ]
    if batch == 1:
        return [encode(ev) for ev in events]
    return [
        json.dumps(events[i : i + batch], separators=(",", ":")).encode()
        for i in range(0, len(events), batch)
    ]


def hammer(address: str, bodies: list[bytes], seconds: float) -> dict[str, Any]:
    """POST the bodies in turn, sequentially on one keep-alive connection, for
    ``seconds``: request latencies (s), requests and events scored."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    headers = {"Content-Type": "application/json"}
    lat: list[float] = []
    scored = 0
    t_end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    i = 0
    while True:
        t = time.perf_counter()
        if t >= t_end:
            break
        conn.request("POST", "/predict", bodies[i % len(bodies)], headers)
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        lat.append(time.perf_counter() - t)
        if resp.status != 200:
            raise RuntimeError(f"/predict answered {resp.status}: {doc}")
        scored += 1 if "score" in doc else sum(s is not None for s in doc["scores"])
        i += 1
    wall = time.perf_counter() - t0
    conn.close()
    return {"latencies": lat, "requests": len(lat), "scored": scored, "seconds": wall}


def wait_serving(address: str, body: bytes, timeout_s: float) -> None:
    """Until /predict scores (503 while no weights are published yet)."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=5)
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"/predict did not answer 200 within {timeout_s:.0f} s")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and all its descendants (the daemon's ingest workers,
    children of its forkserver)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    tree, total = {pid}, 0.0
    grew = True  # a child's pid may be below its parent's: walk until nothing is added
    while grew:
        grew = False
        for p, pp in parent.items():
            if pp in tree and p not in tree:
                tree.add(p)
                grew = True
    for p in tree:
        try:
            total += proc_cpu_s(p)
        except OSError:
            continue
    return total


def wait_caught_up(url: str, rate: float, timeout_s: float) -> None:
    """Until the daemon has trained a few seconds of the stream and its consumer lag is
    under a second of it, twice in a row (it starts behind: the producer starts with
    it), so that the first quiet phase is not a catch-up."""
    deadline, ok = time.monotonic() + timeout_s, 0
    while time.monotonic() < deadline and ok < 2:
        try:
            m = scrape(url)
            trained = metric(m, "stream_trainer_events_trained_total")
            caught_up = trained > 3 * rate and metric(m, "stream_trainer_consumer_lag") < rate
            ok = ok + 1 if caught_up else 0
        except OSError:
            ok = 0
        time.sleep(1.0)
    if ok < 2:
        raise RuntimeError(f"the daemon did not catch up with {rate:,.0f} events/s in time")
