"""`make bench-replicas`: events/s of the daemon with 1 and 2 replicas under torchrun.

A local broker, one click topic of 4 partitions holding ``--events`` events; then, for
each setting, a fresh consumer group and checkpoint directory, and ``torchrun
--standalone --nproc-per-node N -m stream_trainer run``. The rate is events trained
(summed over the replicas' metrics) over the time from the first trained event to the
last, median of ``--repeats`` runs. Reported, not asserted: on a 2-core machine two
replicas share the cores with the broker.

    .venv/bin/python scripts/bench_replicas.py [--events 60000] [--repeats 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import yaml
from bench_gpu import write_section

from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import per_pipeline, scrape
from stream_trainer.producers import make_generator
from stream_trainer.producers.publish import publish

START, END = "<!-- replicas:start -->", "<!-- replicas:end -->"
SETTINGS = [(1, "-"), (2, "allreduce"), (2, "average")]
PARTITIONS = 4


def trained(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        try:
            total += per_pipeline(
                scrape(f"http://127.0.0.1:{port}/metrics"), "stream_trainer_events_trained_total"
            ).get("clicks", 0.0)
        except OSError:
            pass
    return total


def one_run(bootstrap: str, topic: str, n: int, nproc: int, mode: str, work: Path) -> float:
    port = free_port()
    cfg = {
        "kafka": {"bootstrap_servers": bootstrap, "group_prefix": f"bench-{time.time_ns()}"},
        "device": "cpu",
        "metrics": {"address": f"127.0.0.1:{port}"},
        "checkpoint": {"dir": str(work / f"ckpt-{time.time_ns()}"), "every_seconds": 5.0},
        "pipelines": [{"name": "clicks", "kind": "clicks", "topics": [topic],
                       "drift": {"actions": ["reset_optimizer"]},
                       "sync": {"mode": mode if mode != "-" else "allreduce"}}],
    }  # fmt: skip
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(work / f"run-{nproc}-{mode}.log", "wb")  # noqa: SIM115
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
         "--nproc-per-node", str(nproc), "-m", "stream_trainer", "run", "--config", str(path)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    ports = [port + r for r in range(nproc)]
    first = last = None
    seen = 0.0
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            now, seen = time.monotonic(), trained(ports)
            if seen > 0 and first is None:
                first = now
            if seen >= n:
                last = now
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(60)
    if first is None or last is None:
        raise SystemExit(
            f"bench-replicas: run {nproc} x {mode} trained {seen} of {n}; see {log.name}"
        )
    return n / max(last - first, 1e-9)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="replace the replicas section of this markdown file")
    a = ap.parse_args()
    broker = LocalBroker(port=free_port())
    broker.start()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    rows = []
    try:
        topic = "bench-clicks"
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        events = list(make_generator("clicks", seed=0, count=a.events))
        publish(broker.bootstrap, topic, events, key_field="user_id", progress=False)
        for nproc, mode in SETTINGS:
            rates = []
            for k in range(a.repeats):
                rates.append(one_run(broker.bootstrap, topic, a.events, nproc, mode, work))
                print(f"bench-replicas: {nproc} x {mode}: run {k + 1}: {rates[-1]:,.0f} events/s",
                      file=sys.stderr)  # fmt: skip
            rows.append((nproc, mode, statistics.median(rates), min(rates), max(rates)))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    base = rows[0][2]
    lines = [
        START,
        "## Replicas (torchrun)",
        "",
        f"`scripts/bench_replicas.py --events {a.events} --repeats {a.repeats}` (`make "
        f"bench-replicas`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}: one click topic of "
        f"{PARTITIONS} partitions, {a.events:,} events, the daemon's default clicks "
        "pipeline; events trained per second from the first trained event to the last, "
        "summed over the replicas; median (min–max).",
        "",
        "| replicas | sync | events/s | vs 1 replica |",
        "|---:|---|---:|---:|",
    ]
    for nproc, mode, med, lo, hi in rows:
        lines.append(f"| {nproc} | {mode} | {med:,.0f} ({lo:,.0f}–{hi:,.0f}) | {med / base:.2f}× |")
    lines.append(END)
    section = "\n".join(lines)
    print(section)
    if a.out:
        write_section(Path(a.out), section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
