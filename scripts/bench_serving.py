"""`make bench-serving` (and the last part of `make bench`): /predict while the daemon trains.

A local broker, the daemon (`stream-trainer run`, a minimal clicks config plus
`serving: {address: ...}`) and `stream-trainer produce clicks --rate 5000`. Once serving
answers, four phases of ``--seconds`` each, back to back:

1. no serving load (the daemon's trained events/s, the baseline);
2. one client sending single events to /predict, sequentially, on one keep-alive
   connection (http.client): latency p50/p99 per request;
3. the same client sending batches of 256 events: scored events/s, latency per request;
4. no serving load again (the machine's speed drifts: the baseline is both quiet phases).

The default is run ``--repeats`` times (a fresh broker and daemon each), and the targets
are the medians of the runs' figures. Then (unless ``--no-thread``) the same again with
a fresh daemon whose requests are answered on a thread of its own process
(``serving.process: false``), for comparison.

During each phase the daemon's trained events/s (``events_trained_total`` over the
phase) and consumer lag at its end; the train-to-serve age p99 over the whole run from
the daemon's ``train_to_serve_age_seconds`` histogram. The client runs in this process
on the same machine as the daemon, the producer and the broker: on 2 cores they share
them, which is the point.

The client of the daemon (its /predict load, and what it reads of the daemon's /metrics):
bench_serving_client.py.

    .venv/bin/python scripts/bench_serving.py [--rate 5000] [--seconds 20] [--repeats 3]
        [--no-thread] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from bench_gpu import write_section
from bench_report import machine, verdict
from bench_serving_client import (
    PIPELINE,
    buckets,
    hammer,
    histogram_quantile,
    metric,
    produced,
    requests_for,
    tree_cpu_s,
    wait_caught_up,
    wait_serving,
)

from stream_trainer.edges.admin import create_topics
from stream_trainer.local import procs
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import scrape

START, END = "<!-- serving:start -->", "<!-- serving:end -->"
BATCH = 256
TARGET_P99_MS = 10.0
TARGET_BATCH_EVENTS_S = 20_000.0
TARGET_TRAIN_DROP = 0.20
TARGET_AGE_P99_S = 1.0
AGE = "stream_trainer_train_to_serve_age_seconds"


# ---- one phase -----------------------------------------------------------------------------
QUIET, SINGLE, BATCHES, QUIET_AGAIN = "quiet", "single events", f"batches of {BATCH}", "quiet again"


def phase(
    name: str, bodies: list[bytes] | None, url: str, serve_at: str, pid: int, seconds: float
) -> dict[str, Any]:
    """One phase: the client's load (none without ``bodies``) for ``seconds``, and the
    daemon's trained events/s, lag and CPU meanwhile."""
    before, cpu0, t0 = scrape(url), tree_cpu_s(pid), time.monotonic()
    load = hammer(serve_at, bodies, seconds) if bodies else None
    if load is None:
        time.sleep(seconds)
    after, cpu1, t1 = scrape(url), tree_cpu_s(pid), time.monotonic()
    trained = "stream_trainer_events_trained_total"
    out: dict[str, Any] = {
        "name": name,
        "seconds": t1 - t0,
        "trained_per_s": (metric(after, trained) - metric(before, trained)) / (t1 - t0),
        # what the producer managed meanwhile (it shares the cores too): read + still to read
        "produced_per_s": (produced(after) - produced(before)) / (t1 - t0),
        "lag": metric(after, "stream_trainer_consumer_lag"),
        "daemon_cores": (cpu1 - cpu0) / (t1 - t0),
    }
    if load is not None:
        lat = np.array(load["latencies"]) * 1000.0
        out.update(
            requests=load["requests"],
            scored_per_s=load["scored"] / load["seconds"],
            p50_ms=float(np.percentile(lat, 50)),
            p99_ms=float(np.percentile(lat, 99)),
        )
    return out


def describe(p: dict[str, Any]) -> str:
    text = (
        f"{p['name']}: trained {p['trained_per_s']:,.0f}/s of {p['produced_per_s']:,.0f}/s "
        f"produced, lag {p['lag']:,.0f}"
    )
    if "requests" in p:
        text += (
            f"; {p['requests']:,} requests, p50 {p['p50_ms']:.2f} ms, p99 {p['p99_ms']:.2f} ms, "
            f"{p['scored_per_s']:,.0f} scored/s"
        )
    return text


# ---- the run -------------------------------------------------------------------------------
def run(a: argparse.Namespace, say: Any, process: bool = True) -> dict[str, Any]:
    """One daemon, its four phases. ``process``: ``serving.process`` (the default, a
    serving process of its own) or False (requests on a thread of the daemon's)."""
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    singles = requests_for(2000, 1)
    batches = requests_for(40, BATCH)
    with LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")) as broker:
        metrics_at, serve_at = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        cfg = {
            "kafka": {"bootstrap_servers": broker.bootstrap},
            "metrics": {"address": metrics_at},
            "checkpoint": {"dir": str(work / "ckpt")},
            "serving": {"address": serve_at, "process": process},
            "pipelines": [{"name": PIPELINE, "kind": "clicks", "topics": ["clicks"]}],
        }
        (work / "config.yaml").write_text(yaml.safe_dump(cfg))
        create_topics(broker.bootstrap, {"clicks": 2})
        log = open(work / "daemon.log", "wb")
        daemon = procs.spawn(
            procs.python_module("run", "--config", str(work / "config.yaml")),
            stdout=log,
            stderr=log,
        )
        plog = open(work / "producer.log", "wb")
        producer = procs.spawn(
            procs.python_module(
                *("produce", "clicks", "--bootstrap-servers", broker.bootstrap),
                *("--rate", str(a.rate), "--linger-ms", "10", "--quiet"),
            ),
            stdout=plog,
            stderr=plog,
        )
        url = f"http://{metrics_at}/metrics"
        try:
            say("waiting for the daemon to train and publish")
            wait_serving(serve_at, singles[0], a.start_timeout)
            say("waiting for the daemon to catch up with the producer")
            wait_caught_up(url, a.rate, a.start_timeout)
            time.sleep(a.warmup)
            first = scrape(url)
            phases = []
            for name, bodies in (
                (QUIET, None),
                (SINGLE, singles),
                (BATCHES, batches),
                (QUIET_AGAIN, None),
            ):
                phases.append(phase(name, bodies, url, serve_at, daemon.pid, a.seconds))
                say(describe(phases[-1]))
            last = scrape(url)
        finally:
            procs.stop(producer)
            code = procs.stop(daemon, timeout_s=30)
    age = {b: last_c - buckets(first, AGE).get(b, 0.0) for b, last_c in buckets(last, AGE).items()}
    return {
        "phases": phases,
        "age_p99_s": histogram_quantile(0.99, age),
        "age_p50_s": histogram_quantile(0.5, age),
        "publications": age.get(math.inf, 0.0),
        "daemon_exit": code,
        "work": str(work),
    }


# ---- the report ----------------------------------------------------------------------------
def figures(r: dict[str, Any]) -> dict[str, Any]:
    """One run's target figures (one-event p99, batch scored/s, training drop, age p99),
    and what the drop is made of: the quiet phases' mean rate and the slower loaded phase."""
    ph = {p["name"]: p for p in r["phases"]}
    quiet = (ph[QUIET]["trained_per_s"] + ph[QUIET_AGAIN]["trained_per_s"]) / 2
    worse = min((ph[SINGLE], ph[BATCHES]), key=lambda p: p["trained_per_s"])
    return {
        "p99_ms": ph[SINGLE]["p99_ms"],
        "p50_ms": ph[SINGLE]["p50_ms"],
        "scored_per_s": ph[BATCHES]["scored_per_s"],
        "drop": 1.0 - worse["trained_per_s"] / quiet,
        "age_p99_s": r["age_p99_s"],
        "quiet": quiet,
        "worse": worse,
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose one-event p99 is the median (its phases are the tables' rows), with
    every run's figures beside it (``repeats``)."""
    ordered = sorted(runs, key=lambda r: figures(r)["p99_ms"])
    return {**ordered[(len(ordered) - 1) // 2], "repeats": [figures(r) for r in runs]}


def render(r: dict[str, Any], a: argparse.Namespace, argv: list[str]) -> str:
    f = figures(r)  # the median run's
    quiet, worse, drop, age = f["quiet"], f["worse"], f["drop"], r["age_p99_s"]
    kept_up = worse["trained_per_s"] / max(worse["produced_per_s"], 1e-9)
    reps = r.get("repeats") or [f]

    def med(key: str) -> float:
        return float(np.median([x[key] for x in reps]))

    def spread(key: str, fmt: str, unit: str = "") -> str:
        """The median over the repeats, and their range when there are several."""
        if len(reps) == 1:
            return format(med(key), fmt) + unit
        vals = [x[key] for x in reps]
        lo, hi = format(min(vals), fmt), format(max(vals), fmt)
        return f"{format(med(key), fmt)}{unit} (median of {len(reps)}; {lo}–{hi})"

    lines = [
        START,
        "## Serving while training",
        "",
        f"Made by `{' '.join(argv)}` (part of `make bench`; alone: `make bench-serving`) on "
        f"{r['date']}. Machine: " + "; ".join(f"{k} {v}" for k, v in r["machine"].items()) + ".",
        "",
        f"The daemon (`stream-trainer run`, a minimal clicks config plus `serving.address`: "
        "/predict in a serving process of its own, the default) "
        f"trains on `stream-trainer produce clicks --rate {a.rate:g}`; a client in the bench "
        f"process POSTs to /predict sequentially on one keep-alive connection, "
        f"{a.seconds:g} s per phase, after {a.warmup:g} s of warm-up. The client, the "
        "daemon, the producer and the broker share the machine's cores.",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| /predict p99 ≤ {TARGET_P99_MS:g} ms, one event | "
        f"{spread('p99_ms', '.2f', ' ms')} | "
        f"{verdict(med('p99_ms') <= TARGET_P99_MS)} |",
        f"| ≥ {TARGET_BATCH_EVENTS_S:,.0f} scored events/s in batches of {BATCH} | "
        f"{spread('scored_per_s', ',.0f', '/s')} | "
        f"{verdict(med('scored_per_s') >= TARGET_BATCH_EVENTS_S)} |",
        f"| training events/s drop ≤ {TARGET_TRAIN_DROP:.0%} under serving load | "
        f"{spread('drop', '.1%')}; in the median run {drop:.1%}: "
        f"{worse['trained_per_s']:,.0f}/s ({worse['name']}) vs {quiet:,.0f}/s "
        f"(the quiet phases' mean); meanwhile produced {worse['produced_per_s']:,.0f}/s, "
        f"trained / produced {kept_up:.2f}, lag {worse['lag']:,.0f} at its end | "
        f"{verdict(med('drop') <= TARGET_TRAIN_DROP)} |",
        f"| train-to-serve age p99 ≤ {TARGET_AGE_P99_S:g} s | "
        f"{spread('age_p99_s', '.3f', ' s')}; "
        f"in the median run {age:.3f} s (p50 "
        f"{r['age_p50_s']:.3f} s, {r['publications']:,.0f} publications) | "
        f"{verdict(med('age_p99_s') <= TARGET_AGE_P99_S)} |",
        "",
        f"{len(reps)} run(s) of the default (a serving process), each with a fresh daemon and "
        "broker; the tables below are the run with the median one-event p99.",
        "",
        "| phase | trained events/s | produced events/s | consumer lag at its end | daemon "
        "CPU cores (and its ingest workers) | requests | p50 ms | p99 ms | scored events/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in r["phases"]:
        req = (
            f"{p['requests']:,} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['scored_per_s']:,.0f}"
            if "requests" in p
            else "– | – | – | –"
        )
        lines.append(
            f"| {p['name']} | {p['trained_per_s']:,.0f} | {p['produced_per_s']:,.0f} | "
            f"{p['lag']:,.0f} | "
            f"{p['daemon_cores']:.2f} | {req} |"
        )
    if "thread" in r:  # the same four phases, serving on a thread of the daemon's
        t = figures(r["thread"])
        lines += [
            "",
            "The same run again with `serving.process: false` (requests on a thread of the "
            "daemon's, sharing the trainer's GIL), a fresh daemon, right after:",
            "",
            "| serving | one event p50 ms | one event p99 ms | batches of "
            f"{BATCH}: scored events/s | training drop under serving load |",
            "|---|---|---|---|---|",
            f"| own process (the default) | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
            f"{f['scored_per_s']:,.0f} | {drop:.1%} |",
            f"| a thread of the daemon's | {t['p50_ms']:.2f} | {t['p99_ms']:.2f} | "
            f"{t['scored_per_s']:,.0f} | {t['drop']:.1%} |",
        ]
    lines += [
        "",
        "Latency is the client's: from sending the request to its parsed answer. Trained "
        "events/s is `stream_trainer_events_trained_total` over the phase, produced events/s "
        "what the topic gained meanwhile (read + lag): at a produce rate the daemon keeps up "
        "with, trained follows produced, and a load that costs the trainer shows as trained "
        "below produced and a growing lag; a load that slows the producer (it shares the "
        "cores) lowers both. The age is the daemon's "
        "`stream_trainer_train_to_serve_age_seconds` histogram over the four phases "
        "(`histogram_quantile`, linear within its bucket).",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="click events/s produced")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the phases")
    ap.add_argument("--start-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="replace the serving section of this markdown file")
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument(
        "--repeats", type=int, default=3, help="runs of the default (medians of their figures)"
    )
    ap.add_argument(
        "--no-thread",
        dest="thread_too",
        action="store_false",
        help="skip the second run with serving on a thread of the daemon's",
    )
    a = ap.parse_args()
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[bench-serving {time.monotonic() - t0:6.1f}s] {msg}", flush=True)

    runs = []
    for i in range(a.repeats):
        say(f"run {i + 1} of {a.repeats}: serving in a process of its own (the default)")
        runs.append(run(a, say))
    r = median_run(runs)
    if a.thread_too:  # the same, serving on a thread of the daemon's: what the process buys
        say("again, serving on a thread of the daemon's (serving.process: false)")
        r["thread"] = run(a, say, process=False)
    r["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    r["machine"] = machine()
    section = render(r, a, ["scripts/bench_serving.py", *sys.argv[1:]])
    print(section)
    if a.out:
        write_section(Path(a.out), section, START, END)
        say(f"wrote the serving section of {a.out}")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0 if all(x["daemon_exit"] == 0 for x in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
