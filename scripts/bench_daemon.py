"""`make bench`'s daemon runs (scripts/bench.py runs them): the daemon's Service on one
topic in a child process per run (so RSS is its own), with a recorder on its hooks for
throughput, event-to-update latency at a produce rate, checkpoints and batches; and the
CPU and RSS readings of a process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream_trainer.config import parse_settings

# Every daemon run uses a minimal config: the defaults (batching, ingest workers) are
# what is measured. The ingest-worker rows vary only ``ingest.workers``.
PRODUCER_LINGER_MS = 5  # latency runs: how long the producer holds events (in the latency)


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident set size of a process (this one by default), MB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class _Recorder:
    """Wraps a pipeline's hooks: when the first records arrived, each batch's event ages."""

    def __init__(self, inner: Any, done: Callable[[], bool]) -> None:
        self.inner, self.done = inner, done
        self.first: float | None = None
        self.finished: float | None = None
        self.ages: list[tuple[float, list[float]]] = []
        self.checkpoints: list[float] = []
        self.steps: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def on_consumed(self, n: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.inner.on_consumed(n)

    def on_checkpoint(self, seconds: float, timestamp: float) -> None:
        self.checkpoints.append(seconds)
        self.inner.on_checkpoint(seconds, timestamp)

    def on_batch(self, **kw: Any) -> None:
        now = time.perf_counter()
        self.ages.append((now, kw["event_ages"]))
        self.steps.append((kw["trained"], kw["update_seconds"]))
        if self.finished is None and self.done():
            self.finished = now
        self.inner.on_batch(**kw)


def daemon_worker(a: argparse.Namespace) -> dict[str, Any]:
    """Child process: the daemon's Service on one topic until ``a.count`` events are
    processed. With ``a.rate``, a producer starts once partitions are assigned."""
    from stream_trainer.service import Service

    doc = {
        "kafka": {"bootstrap_servers": a.bootstrap, "group_prefix": a.group},
        "metrics": {"address": "127.0.0.1:0"},
        "checkpoint": {"dir": str(Path(a.workdir) / "checkpoints"), "every_seconds": 10},
        "device": "cpu",
        "ingest": {"workers": int(w) if (w := a.ingest_workers).isdigit() else w},
        "pipelines": [
            {"name": a.kind, "kind": a.kind, "topics": [a.topic], **json.loads(a.pipeline_extra)}
        ],
    }
    if a.kind == "tabular":  # the only settings it needs: the shop stream's fields
        from bench_runs import TABULAR_FEATURIZER

        doc["pipelines"][0]["featurizer"] = TABULAR_FEATURIZER
    svc = Service(parse_settings(doc, "bench"))
    p = svc.pipelines[0]
    c = p.counters
    rec = _Recorder(p.hooks, lambda: c["trained"] + c["seeded"] + c["rejected"] >= a.count)
    p.hooks = rec
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not p.ready()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    producer = None
    produce_start = time.perf_counter()
    workers = getattr(p.source, "workers", [])  # ingest worker processes: CPU and RSS too
    cpu_start = (
        time.process_time(),
        proc_cpu_s(a.broker_pid),
        sum(proc_cpu_s(w.process.pid) for w in workers),
    )
    if a.rate:  # the stream's events, pre-encoded: the producer only paces and sends
        producer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_trainer",
                "produce",
                "--from-file",
                a.from_file,
                "--bootstrap-servers",
                a.bootstrap,
                "--topic",
                a.topic,
                "--rate",
                str(a.rate),
                "--count",
                str(a.count),
                "--linger-ms",
                str(a.linger_ms),
                "--quiet",
            ]
        )
    deadline = time.monotonic() + a.timeout
    while rec.finished is None and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.perf_counter() - produce_start
    cpu = {
        "daemon": (time.process_time() - cpu_start[0]) / wall,
        "workers": (sum(proc_cpu_s(w.process.pid) for w in workers) - cpu_start[2]) / wall,
        "broker": (proc_cpu_s(a.broker_pid) - cpu_start[1]) / wall,
    }
    produce_seconds = None
    if producer is not None:
        _, status, usage = os.wait4(producer.pid, 0)  # the producer's own CPU time
        producer.returncode = os.waitstatus_to_exitcode(status)
        produce_seconds = time.perf_counter() - produce_start
        cpu["producer"] = (usage.ru_utime + usage.ru_stime) / produce_seconds
    rss, peak = rss_mb()
    for w in workers:
        w_rss, w_peak = rss_mb(w.process.pid)
        rss, peak = rss + w_rss, peak + w_peak
    svc.stop.set()
    runner.join(30)
    out: dict[str, Any] = {
        "processed": c["trained"] + c["seeded"] + c["rejected"],
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "finished": rec.finished is not None,
        "ingest_workers": len(workers),
        "cpu_cores": cpu,
        "checkpoint_s_max": max(rec.checkpoints, default=0.0),
        "batches": len(rec.steps),
        "mean_batch": float(np.mean([n for n, _ in rec.steps])) if rec.steps else 0.0,
        "step_ms_p50": 1000 * float(np.median([s for _, s in rec.steps])) if rec.steps else 0.0,
    }
    if rec.first is not None and rec.finished is not None:
        out["events_per_s"] = a.count / (rec.finished - rec.first)
    if a.rate:
        skip_until = produce_start + a.warmup
        ages = [age for t, batch in rec.ages if t >= skip_until for age in batch]
        out["produce_rate"] = a.count / produce_seconds if produce_seconds else None
        out["latency_ms"] = {
            "p50": 1000 * float(np.percentile(ages, 50)) if ages else None,
            "p99": 1000 * float(np.percentile(ages, 99)) if ages else None,
            "max": 1000 * float(max(ages)) if ages else None,
            "events": len(ages),
        }
    return out


# The daemon's child runs bench.py's main from ``-c``, not as a script: an ingest worker
# (a forkserver process) imports its parent's main script again, as multiprocessing does,
# and this one imports torch, River and Vowpal Wabbit, a hundred MB and more that the
# daemon's own workers (``stream-trainer run``) never load.
WORKER_BOOT = (
    "import sys; sys.path.insert(0, {dir!r}); import bench; raise SystemExit(bench.main())"
)


def run_worker(bootstrap: str, kind: str, topic: str, count: int, **extra: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        argv = [
            sys.executable,
            "-c",
            WORKER_BOOT.format(dir=str(Path(__file__).parent)),
            "--worker",
            "--bootstrap",
            bootstrap,
            "--kind",
            kind,
            "--topic",
            topic,
            "--count",
            str(count),
            "--group",
            f"bench-{kind}-{time.time_ns()}",
            "--workdir",
            work,
        ]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"bench worker failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
