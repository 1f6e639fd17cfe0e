"""`make bench` and `make bench-gpu` keep working: both scripts on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
        "--kinds", "clicks,ticks",
        "--worker-counts", "0,1",
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
    assert r["client_decode"][0] > 0 and r["client_raw"][0] >= r["client_decode"][0] * 0.5
    assert r["e2e"]["clicks"][0] > 0 and r["e2e"]["ticks"][0] > 0
    assert r["paired"]["clicks"][0] > 0 and r["workers_used"]["clicks"] >= 1  # auto
    assert set(r["workers"]) == {"0", "1"} and all(v["rate"][0] > 0 for v in r["workers"].values())
    assert 0.3 < r["river"]["ll"][0] < 0.7  # River is a dependency: always measured
    for v in r["core"].values():  # the click model learns: better than a coin
        assert v["rate"][0] > 0 and v["ll"][0] < 0.69
    lat = r["latency"]["1000"][0]
    assert lat["events"] > 1000 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert lat["cpu"]["daemon"] > 0 and lat["cpu"]["producer"] > 0
    profile = r["profile"]
    assert profile["total"] > 0 and profile["kafka-python poll (the client)"] > 0


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
