"""Soak: the daemon under a steady produce rate through the real broker, for minutes.

Reports RSS at start (after warm-up) and end, errors and consumer lag, against the
targets: RSS grows <= 5% after warm-up, 0 errors, lag bounded. Not a CI test.

    .venv/bin/python scripts/soak.py --duration 600 --rate 5000 [--out soak.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from stream_trainer.edges.admin import create_topics
from stream_trainer.local import procs
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import per_pipeline, scrape


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total(samples: dict, name: str, **labels: str) -> float:
    return sum(per_pipeline(samples, name, **labels).values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s produced")
    ap.add_argument("--kind", default="clicks", choices=["clicks", "ticks", "sensors"])
    ap.add_argument("--partitions", type=int, default=2, help="partitions of the topic")
    ap.add_argument("--linger-ms", type=int, default=100, help="the producer's batching delay")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", help="also write the report (markdown) here")
    ap.add_argument("--daemon-log-level", default="info", help="the daemon's --log-level")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="soak-"))
    broker = LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")).start()
    metrics = f"127.0.0.1:{free_port()}"
    print(f"soak: work dir {work}", flush=True)
    cfg = {
        "kafka": {"bootstrap_servers": broker.bootstrap},
        "metrics": {"address": metrics},
        "checkpoint": {"dir": str(work / "ckpt"), "every_seconds": 10},
        "pipelines": [{"name": a.kind, "kind": a.kind, "topics": [a.kind]}],
    }
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    create_topics(broker.bootstrap, {a.kind: a.partitions})
    dlog = open(work / "daemon.log", "wb")
    daemon = procs.spawn(
        procs.python_module(
            "run", "--config", str(work / "c.yaml"), "--log-level", a.daemon_log_level
        ),
        stdout=dlog,
        stderr=dlog,
    )
    plog = open(work / "producer.log", "wb")
    producer = procs.spawn(
        procs.python_module(
            "produce",
            a.kind,
            "--bootstrap-servers",
            broker.bootstrap,
            "--rate",
            str(a.rate),
            "--drift-every",
            "500000",
            "--quiet",
            "--linger-ms",
            str(a.linger_ms),
        ),
        stdout=plog,
        stderr=plog,
    )
    rows = []
    t0 = time.monotonic()
    broker_cpu, broker_t = cpu_seconds(broker.proc.pid), t0
    try:
        while time.monotonic() - t0 < a.duration:
            time.sleep(a.every)
            if daemon.poll() is not None:
                print(f"daemon exited with {daemon.returncode}; see {work}/daemon.log")
                return 1
            try:
                s = scrape(f"http://{metrics}/metrics")
            except OSError:
                continue
            now, cpu = time.monotonic(), cpu_seconds(broker.proc.pid)
            row = {
                "t": now - t0,
                "rss_mb": rss_mb(daemon.pid),
                "broker_rss_mb": rss_mb(broker.proc.pid),
                "broker_cpu_pct": 100.0 * (cpu - broker_cpu) / (now - broker_t),
                "consumed": total(s, "stream_trainer_events_consumed_total"),
                "trained": total(s, "stream_trainer_events_trained_total"),
                "rejected": total(s, "stream_trainer_events_rejected_total"),
                "skipped": total(s, "stream_trainer_updates_skipped_total"),
                "ckpt_fail": total(s, "stream_trainer_checkpoint_failures_total"),
                "lag": total(s, "stream_trainer_consumer_lag"),
            }
            broker_cpu, broker_t = cpu, now
            rows.append(row)
            print(
                f"t={row['t']:6.0f}s rss={row['rss_mb']:7.1f}MB trained={row['trained']:>10,.0f}"
                f" lag={row['lag']:>8,.0f} broker={row['broker_rss_mb']:6.0f}MB"
                f" {row['broker_cpu_pct']:3.0f}%cpu",
                flush=True,
            )
    finally:
        procs.stop(producer)
        code = procs.stop(daemon, timeout_s=30)
        broker.stop()
    errors = sum(
        1
        for line in (work / "daemon.log").read_text().splitlines()
        if " error " in line or "Traceback" in line
    )
    warm = [r for r in rows if r["t"] >= a.warmup] or rows
    start, end = warm[0], rows[-1]
    # RSS wobbles by a few MB with the allocator: compare medians of the first and the
    # last minute after warm-up, not two single samples.
    k = max(1, int(60 / a.every))
    rss_start = statistics.median(r["rss_mb"] for r in warm[:k])
    rss_end = statistics.median(r["rss_mb"] for r in warm[-k:])
    growth = 100.0 * (rss_end - rss_start) / rss_start
    rate = (end["trained"] - start["trained"]) / max(1e-9, end["t"] - start["t"])
    lags = [r["lag"] for r in warm]
    half = len(lags) // 2
    lag_bounded = not lags[half:] or max(lags[half:]) <= max(2 * max(lags[:half] or [0]), a.rate)
    bad = end["skipped"] + end["ckpt_fail"] + errors + (code != 0)
    cmd = (
        f"scripts/soak.py --duration {a.duration:g} --rate {a.rate:g} --kind {a.kind} "
        f"--partitions {a.partitions} --linger-ms {a.linger_ms}"
    )
    ok = {True: "ok", False: "MISSED"}
    med_lag, max_lag = statistics.median(lags), max(lags)
    lines = [
        f"### Soak: {a.kind}, {a.rate:,.0f} events/s for {a.duration:,.0f} s",
        "",
        f"Command: `.venv/bin/python {cmd}`",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| RSS, first minute after {a.warmup:g} s warm-up (median) | {rss_start:.1f} MB | |",
        f"| RSS, last minute (median) | {rss_end:.1f} MB | |",
        f"| RSS growth after warm-up | {growth:+.2f}% | <= 5% {ok[growth <= 5]} |",
        f"| trained events/s after warm-up | {rate:,.0f} | {a.rate:,.0f} produced |",
        f"| errors: logged, skipped updates, checkpoints postponed | {bad:.0f} "
        f"| 0 {ok[bad == 0]} |",
        f"| rejected events | {end['rejected']:.0f} | 0 |",
        f"| consumer lag after warm-up, median / max | {med_lag:,.0f} / {max_lag:,.0f} "
        f"| bounded {ok[lag_bounded]} |",
        f"| daemon exit code on SIGTERM | {code} | 0 |",
        f"| local broker at the end: RSS / CPU (max over the run) | {end['broker_rss_mb']:.0f} MB"
        f" / {max(r['broker_cpu_pct'] for r in rows):.0f}% | |",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if a.out:
        Path(a.out).write_text(report)
    return 0 if growth <= 5 and bad == 0 and lag_bounded else 1


if __name__ == "__main__":
    sys.exit(main())
