"""`make bench`: every throughput and latency figure of BENCHMARKS.md, in one run.

One generated click stream (with a drift midway) is produced once to the local broker
and measured by everything: kafka-python's raw consume and consume + JSON-decode rates
(the client limit), River and Vowpal Wabbit (the trainers people glue to Kafka),
our trainer core on pre-built batches, and the daemon end to end. Then event-to-update
latency at fixed produce rates, and the daemon's RSS. Each figure is the median of
``--repeats`` runs; the daemon runs in a child process per repeat so RSS is its own.

This file runs them and writes BENCHMARKS.md; the measurements made in this process:
bench_runs.py; the daemon's runs in a child process: bench_daemon.py; the report's
markdown: bench_report.py.

    .venv/bin/python scripts/bench.py [--events 200000] [--repeats 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from bench_daemon import PRODUCER_LINGER_MS, daemon_worker, run_worker
from bench_report import machine, med, render
from bench_runs import (
    AVRO_SCHEMA_ID,
    CLICK_SCHEMA,
    SEED,
    click_events,
    client_rate,
    core_run,
    encode,
    fill_avro_topic,
    fill_topic,
    gil_overlap,
    river_run,
    stage_profile,
    tabular_events,
    vw_run,
)

from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.producers.generators import make_generator

CORE_BATCHES = (256, 1024, 2048, 4096)
GPU_START, GPU_END = "<!-- gpu:start -->", "<!-- gpu:end -->"
REPLICAS_START, REPLICAS_END = "<!-- replicas:start -->", "<!-- replicas:end -->"
SERVING_START, SERVING_END = "<!-- serving:start -->", "<!-- serving:end -->"
GPU_PLACEHOLDER = f"""{GPU_START}
## GPU

Not measured yet: no GPU was at hand when this file was made. On a machine with one,
`make bench-gpu` (`scripts/bench_gpu.py`, torch and numpy only) fills this section.
{GPU_END}"""


# ---- main -----------------------------------------------------------------------------------
def avro_pipeline(work: Path) -> dict[str, str]:
    """run_worker's extra arguments for the clicks-avro rows: the pipeline's format."""
    (work / "schemas").mkdir(exist_ok=True)
    (work / "schemas" / f"{AVRO_SCHEMA_ID}.avsc").write_text(json.dumps(CLICK_SCHEMA))
    avro = {"format": "avro", "avro": {"schemas": str(work / "schemas")}}
    return {"pipeline_extra": json.dumps(avro)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="events in the stream")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--rates", default="1000,5000,20000", help="produce rates for latency")
    ap.add_argument("--latency-seconds", type=float, default=15.0, help="seconds per rate")
    ap.add_argument("--warmup", type=float, default=2.0, help="latency: seconds left out")
    ap.add_argument(
        "--kinds",
        default="clicks,ticks,sensors,clicks-avro,tabular",
        help="end-to-end pipelines (clicks-avro: the click stream as Confluent-framed Avro)",
    )
    ap.add_argument(
        "--worker-counts", help="ingest.workers values for the clicks rows (0,1,2,cores)"
    )
    ap.add_argument("--out", default="BENCHMARKS.md", help="report file (markdown)")
    ap.add_argument("--json", help="also write the raw figures here")
    # the child process that runs the daemon
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--bootstrap", "--kind", "--topic", "--group", "--workdir"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--from-file", help=argparse.SUPPRESS)
    ap.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--linger-ms", type=int, default=PRODUCER_LINGER_MS, help=argparse.SUPPRESS)
    ap.add_argument("--ingest-workers", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    ap.add_argument("--pipeline-extra", default="{}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.worker:
        print(json.dumps(daemon_worker(a)))
        return 0

    t_start = time.monotonic()
    say = lambda msg: print(f"[bench {time.monotonic() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731
    n, reps = a.events, a.repeats
    r: dict[str, Any] = {
        "events": n,
        "repeats": reps,
        "warmup": a.warmup,
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    events = click_events(n)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    with LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")) as broker:
        b = broker.bootstrap
        bpid = broker.proc.pid if broker.proc else 0
        say(f"producing {n:,} click events")
        fill_topic(b, "clicks", "bench.clicks", events)

        r["client_raw"], r["client_decode"] = [], []
        for i in range(reps):
            r["client_raw"].append(client_rate(b, "bench.clicks", n, False, f"raw-{i}"))
            r["client_decode"].append(client_rate(b, "bench.clicks", n, True, f"dec-{i}"))
            say(f"client: raw {r['client_raw'][-1]:,.0f}/s, decode {r['client_decode'][-1]:,.0f}/s")

        for name, fn in (("vw", vw_run), ("river", river_run)):
            try:
                runs = [fn(events) for _ in range(reps)]
            except ImportError as err:
                say(f"{name}: skipped ({err})")
                continue
            r[name] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
            say(f"{name}: {med(r[name]['rate']):,.0f}/s, log loss {med(r[name]['ll']):.4f}")

        r["core"] = {}
        for bs in CORE_BATCHES:
            runs = [core_run(events, bs) for _ in range(reps)]
            r["core"][bs] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
            say(f"core batch {bs}: {med(r['core'][bs]['rate']):,.0f}/s")
        # dense embedding gradients (a GPU's default), the tables still under Adagrad
        runs = [core_run(events, 1024, sparse_embeddings=False) for _ in range(reps)]
        r["core_dense"] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
        say(f"core batch 1024, dense embeddings: {med(r['core_dense']['rate']):,.0f}/s")

        # Each daemon run right after a client run on the same topic: the machine's speed
        # swings between runs, so the ratio that counts is the median of these pairs.
        r["e2e"], r["rss"], r["peak_rss"], r["paired"], r["workers_used"] = {}, {}, {}, {}, {}
        for kind in a.kinds.split(","):
            topic, extra, avro = "bench.clicks", {}, kind == "clicks-avro"
            if avro:  # the same click events as Avro: the client decodes with fastavro
                topic, extra = "bench.clicks.avro", avro_pipeline(work)
                fill_avro_topic(b, topic, events)
            elif kind == "tabular":  # a shop's orders, read through a config (bench_runs.py)
                topic = f"bench.{kind}"
                fill_topic(b, kind, topic, tabular_events(n))
            elif kind != "clicks":
                topic = f"bench.{kind}"
                fill_topic(b, kind, topic, list(make_generator(kind, seed=SEED, count=n)))
            runs, pairs = [], []
            for i in range(reps):
                client = client_rate(b, topic, n, True, f"pair-{kind}-{i}", avro=avro)
                runs.append(run_worker(b, kind.split("-")[0], topic, n, broker_pid=bpid, **extra))
                pairs.append(runs[-1]["events_per_s"] / client)
            if not all(x["finished"] for x in runs):
                raise RuntimeError(f"{kind}: the daemon did not process all events: {runs}")
            r["e2e"][kind] = [x["events_per_s"] for x in runs]
            r["paired"][kind] = pairs
            r["workers_used"][kind] = runs[0]["ingest_workers"]
            r["rss"][kind] = [x["rss_mb"] for x in runs]
            r["peak_rss"][kind] = [x["peak_rss_mb"] for x in runs]
            say(f"daemon {kind}: {med(r['e2e'][kind]):,.0f}/s, {med(pairs):.2f} x client (paired)")

        # ingest.workers 0 (all in the trainer's process), 1, 2 and one per core
        r["workers"] = {}
        counts = a.worker_counts or f"0,1,2,{os.cpu_count() or 1}"
        for w in sorted({int(x) for x in counts.split(",")}):
            runs, pairs = [], []
            for i in range(reps):
                client = client_rate(b, "bench.clicks", n, True, f"pair-w{w}-{i}")
                runs.append(run_worker(b, "clicks", "bench.clicks", n, broker_pid=bpid,
                                       ingest_workers=w))  # fmt: skip
                pairs.append(runs[-1]["events_per_s"] / client)
            r["workers"][w] = {
                "rate": [x["events_per_s"] for x in runs],
                "paired": pairs,
                "rss": [x["rss_mb"] for x in runs],
            }
            say(f"clicks, {w} ingest workers: {med(r['workers'][w]['rate']):,.0f}/s")

        say("profiling the clicks pipeline's stages")
        r["profile"] = stage_profile(b, "bench.clicks", n)
        r["gil"] = gil_overlap(events)

        r["latency"] = {}
        rates = [int(x) for x in a.rates.split(",")]
        jsonl = work / "clicks.jsonl"
        longest = int(max(rates) * a.latency_seconds)
        with open(jsonl, "wb") as fh:  # the same stream, as long as the fastest run needs
            for ev in make_generator("clicks", seed=SEED, count=longest, drift_at=n // 2):
                fh.write(encode(ev) + b"\n")
        for rate in rates:
            count = int(rate * a.latency_seconds)
            runs = []
            for i in range(reps):
                x = run_worker(
                    b,
                    "clicks",
                    f"bench.latency.{rate}.{i}",
                    count,
                    rate=rate,
                    from_file=jsonl,
                    broker_pid=bpid,
                    warmup=a.warmup,
                    timeout=a.latency_seconds * 4 + 60,
                )
                if not x["finished"]:
                    raise RuntimeError(f"latency at {rate}/s: not all events trained: {x}")
                runs.append(
                    {**x["latency_ms"], "produce_rate": x["produce_rate"], "cpu": x["cpu_cores"]}
                )
            r["latency"][rate] = runs
            say(
                f"latency at {rate}/s: p50 {med([x['p50'] for x in runs]):.1f} ms, "
                f"p99 {med([x['p99'] for x in runs]):.1f} ms"
            )
    r["seconds"] = time.monotonic() - t_start
    argv = ["scripts/bench.py", *sys.argv[1:]]
    out = Path(a.out)
    report = render(r, argv)
    old = out.read_text() if out.exists() else ""
    if GPU_START in old and GPU_END in old:  # keep the last GPU run's figures
        report += "\n" + GPU_START + old.split(GPU_START, 1)[1].split(GPU_END, 1)[0] + GPU_END
    else:
        report += "\n" + GPU_PLACEHOLDER
    for start, end in ((REPLICAS_START, REPLICAS_END), (SERVING_START, SERVING_END)):
        if start in old and end in old:  # and of `make bench-replicas`, `bench-serving`
            kept = old.split(start, 1)[1].split(end, 1)[0]
            report += "\n\n" + start + kept + end
    out.write_text(report + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
