"""`make bench` and `make bench-gpu` keep working: both scripts on tiny settings."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stream_trainer.producers import make_generator

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.integration
def test_bench_measures_every_figure_and_keeps_the_gpu_section(tmp_path):
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    out.write_text("old\n<!-- gpu:start -->\nFIGURES OF THE LAST GPU RUN\n<!-- gpu:end -->\n")
    done = run(
        "scripts/bench.py",
        "--events", "6000",
        "--repeats", "1",
        "--rates", "1000",
        "--latency-seconds", "4",
        "--warmup", "1",
        "--kinds", "clicks",  # (the other kinds' daemons: the integration tests)
        "--worker-counts", "0",  # (1: the auto row above, on 2 cores)
        "--out", str(out),
        "--json", str(raw),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    text = out.read_text()
    for heading in (
        "## Targets",
        "## The client limit and ours, end to end",
        "## Trainers on the same click events",
        "## Event-to-update latency at fixed produce rates",
        "## Where the daemon's time goes",
        "## Memory",
        "## Ingest workers (clicks)",
    ):
        assert heading in text
    assert "FIGURES OF THE LAST GPU RUN" in text and "old" not in text.split("\n")[0]
    r = json.loads(raw.read_text())
    assert r["events"] == 6000 and r["repeats"] == 1
    # every figure measured once per repeat, finite and positive (no speed is asserted:
    # the bench is where speed is measured, not a test on a shared machine)
    figures = {
        "client_raw": r["client_raw"],
        "client_decode": r["client_decode"],
        "river": r["river"]["rate"],
        "dense": r["core_dense"]["rate"],
        **{f"core {b}": v["rate"] for b, v in r["core"].items()},
        **{f"e2e {k}": v for k, v in r["e2e"].items()},
        **{f"paired {k}": v for k, v in r["paired"].items()},
        **{f"rss {k}": v for k, v in r["rss"].items()},
        **{f"workers {k}": v["rate"] for k, v in r["workers"].items()},
    }
    for name, values in figures.items():
        assert len(values) == 1 and math.isfinite(values[0]) and values[0] > 0, name
    assert set(r["e2e"]) == set(r["paired"]) == set(r["rss"]) == {"clicks"}
    assert set(r["workers"]) == {"0"} and r["workers_used"]["clicks"] >= 1  # auto
    assert r["peak_rss"]["clicks"][0] >= r["rss"]["clicks"][0]
    # River and our trainer core at the daemon's batch (256) learn the bench's clicks: their
    # prequential log loss is below the best constant rate's in hindsight (0.583; measured
    # 0.575 and 0.567; larger batches make too few updates on 6,000 events to say)
    assert "`make_generator('clicks', seed=7, drift_at=3000)`" in text
    labels = [e["label"] for e in make_generator("clicks", seed=7, count=6000, drift_at=3000)]
    rate = sum(labels) / len(labels)
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    assert r["river"]["ll"][0] < constant and r["core"]["256"]["ll"][0] < constant
    for v in [r["core_dense"], *r["core"].values()]:
        assert len(v["ll"]) == 1 and v["ll"][0] < math.log(2)  # better than a coin
    lat = r["latency"]["1000"][0]
    assert lat["events"] > 0 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert all(lat["cpu"][part] > 0 for part in ("daemon", "workers", "broker", "producer"))
    # the stages' timers add up to no more than the wall time ("everything else" >= 0)
    profile = r["profile"]
    stages = {k: v for k, v in profile.items() if k != "total"}
    assert all(v > 0 for v in stages.values()) and profile["kafka-python poll (the client)"] > 0
    # the report is this run's: its figures as the JSON holds them
    assert f"| {r['e2e']['clicks'][0]:,.0f} (" in text
    assert f"| {r['river']['ll'][0]:.4f} |" in text and f"| {lat['p99']:.1f} (" in text
    assert f"| **{profile['total']:.1f}** |" in text


def test_gpu_bench_script_runs_on_the_cpu_and_fills_its_section(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\nCPU figures\n")
    done = run(
        "scripts/bench_gpu.py", "--device", "cpu", "--seconds", "0.05", "--batches", "64",
        "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nCPU figures")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "| 64 |" in line]
    models = {line.split("|")[1].strip() for line in rows}
    assert models == {"clicks", "ticks", "sensors"}
    assert {line.split("|")[3].strip() for line in rows} == {"eager", "eager + bf16"}
    again = run(
        "scripts/bench_gpu.py", "--device", "cpu", "--seconds", "0.05", "--batches", "64",
        "--no-bf16", "--out", str(out),
    )  # fmt: skip
    assert again.returncode == 0
    assert out.read_text().count("<!-- gpu:start -->") == 1  # replaced, not appended


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_bench_says_so_when_there_is_no_gpu():
    done = run("scripts/bench_gpu.py")
    assert done.returncode == 2 and "no CUDA device" in done.stderr
