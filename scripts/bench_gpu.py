"""`make bench-gpu`: optimizer updates/s and events/s of each model on a GPU.

Needs only torch and numpy (and this repository's code). For each model (clicks,
ticks, sensors) and batch size (256, 1024, 8192) it times the daemon's own
``Learner.step`` — forward, per-example losses and outputs back to the host, the
finiteness guards, clipping, the optimizer — eagerly and with CUDA graphs (fixed-shape
batches from pinned buffers), optionally with bf16 autocast. Inputs are real
featurized events from the project's generators, tiled to the batch size.

``--vary`` adds, per model and batch, a run on batches whose sizes vary as lag and replay
make them (half the batch to a quarter over it, one in five over: those take the eager
path beside the captured graph); events/s then counts the rows of each batch.

    .venv/bin/python scripts/bench_gpu.py [--device cuda] [--seconds 2] [--vary]
        [--out BENCHMARKS.md]

The results replace the GPU section of ``--out`` (between its gpu markers), so
BENCHMARKS.md keeps the figures of the last GPU run next to the CPU ones.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.features.sensors import SensorFeaturizer
from stream_trainer.features.ticks import TickFeaturizer
from stream_trainer.learner import Learner
from stream_trainer.models import clicks, forecast
from stream_trainer.producers.generators import make_generator

BATCHES = (256, 1024, 8192)
TARGET_UPDATES = 5000  # clicks model, batch 1024, on an H200
START, END = "<!-- gpu:start -->", "<!-- gpu:end -->"

MODELS = {
    "clicks": (ClickFeaturizer, clicks.build),
    "ticks": (TickFeaturizer, forecast.build_ticks),
    "sensors": (
        lambda: SensorFeaturizer(channels=["temp", "humidity", "pressure"]),
        forecast.build_sensors,
    ),
}


def real_batch(kind: str, size: int) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """A featurized batch of ``size`` rows made from the kind's generator."""
    make_featurizer, _ = MODELS[kind]
    f = make_featurizer()
    fb = f.featurize(list(make_generator(kind, seed=1, count=min(size, 4096) + 64)))
    reps = -(-size // len(fb))
    inputs = {k: np.concatenate([v] * reps)[:size] for k, v in fb.inputs.items()}
    return f, inputs, np.concatenate([fb.targets] * reps)[:size]


def varied(inputs: dict, targets: np.ndarray, size: int) -> list[tuple[dict, np.ndarray]]:
    """Batches cut from one of ``size * 5 // 4`` rows, of sizes from half of ``size`` to a
    quarter over it (seeded; about one in five over ``size``)."""
    sizes = np.random.default_rng(0).integers(max(1, size // 2), size * 5 // 4 + 1, 20)
    return [({k: v[:n] for k, v in inputs.items()}, targets[:n]) for n in sizes.tolist()]


def time_steps(learner: Learner, batches: list, seconds: float) -> tuple[float, float]:
    """(updates/s, events/s) of ``learner.step`` over about ``seconds`` (after warm-up),
    cycling through ``batches``."""
    for i in range(10):  # warm-up: allocator, cuBLAS handles, graph capture
        learner.step(*batches[i % len(batches)])
    sync = torch.cuda.synchronize if learner.device.type == "cuda" else (lambda: None)
    sync()
    steps = events = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            inputs, targets = batches[steps % len(batches)]
            res = learner.step(inputs, targets)
            steps, events = steps + 1, events + len(targets)
            if res.skipped:
                raise RuntimeError(f"benchmark step was refused: {res.skipped}")
    sync()
    dt = time.perf_counter() - t0
    return steps / dt, events / dt


def run(
    device: str,
    seconds: float,
    bf16: bool,
    batches: tuple[int, ...],
    vary: bool = False,
    models: tuple[str, ...] = tuple(MODELS),
) -> list[dict]:
    dev = torch.device(device)
    modes = [("eager", False)] + ([("cuda graphs", True)] if dev.type == "cuda" else [])
    rows = []
    for kind in models:
        build = MODELS[kind][1]
        for bs in batches:
            f, inputs, targets = real_batch(kind, bs * 5 // 4 if vary else bs)
            shapes = [("", [({k: v[:bs] for k, v in inputs.items()}, targets[:bs])])]
            if vary:
                shapes.append((", varying", varied(inputs, targets, bs)))
            for (label, graphs), (shape, work), half in itertools.product(
                modes, shapes, (False, True) if bf16 else (False,)
            ):
                torch.manual_seed(0)
                learner = Learner(
                    build(dict(f.input_spec)),
                    f.task,
                    device=dev,
                    fixed_batch=bs if graphs else None,
                    cuda_graphs=graphs,
                    bf16=half,
                )
                ups, eps = time_steps(learner, work, seconds)
                mode = label + (" + bf16" if half else "") + shape
                rows.append(
                    {"model": kind, "batch": bs, "mode": mode,
                     "updates_per_s": ups, "events_per_s": eps}
                )  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    return rows


def render(rows: list[dict], argv: list[str], device_name: str) -> str:
    lines = [
        START,
        "## GPU",
        "",
        f"Made by `{' '.join(argv)}` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC}; device: "
        f"{device_name}; torch {torch.__version__}, Python {platform.python_version()}. "
        "Each figure: `Learner.step` (the daemon's step: losses and outputs back to the host, "
        "guards, clipping, optimizer) for about the stated seconds after 10 warm-up steps.",
        "",
        "| model | batch | mode | updates/s | events/s |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']:,} | {r['mode']} | {r['updates_per_s']:,.0f} | "
            f"{r['events_per_s']:,.0f} |"
        )
    best = [r["updates_per_s"] for r in rows if r["model"] == "clicks" and r["batch"] == 1024]
    if best:
        ok = max(best) >= TARGET_UPDATES
        lines += [
            "",
            f"Target ≥ {TARGET_UPDATES:,} updates/s at batch 1024 for the clicks model on an "
            f"H200: best {max(best):,.0f} — {'**met**' if ok else '**not met**'}"
            f"{'' if 'H200' in device_name else ' (not measured on an H200)'}.",
        ]
    lines.append(END)
    return "\n".join(lines)


def write_section(path: Path, section: str, start: str = START, end: str = END) -> None:
    """Replace the section of ``path`` between ``start`` and ``end`` (or append one);
    ``section`` includes the markers."""
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per figure")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 rows")
    ap.add_argument("--batches", default=",".join(map(str, BATCHES)), help="batch sizes")
    ap.add_argument("--vary", action="store_true", help="also batches of varying sizes")
    ap.add_argument("--models", default=",".join(MODELS), help="which models")
    ap.add_argument("--out", help="replace the GPU section of this markdown file")
    ap.add_argument("--json", help="also write the raw rows here")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible to torch (try the script with --device cpu)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or "CPU"
    batches = tuple(int(x) for x in a.batches.split(","))
    models = tuple(a.models.split(","))
    if unknown := set(models) - set(MODELS):
        print(f"unknown model(s) {sorted(unknown)}: one of {', '.join(MODELS)}", file=sys.stderr)
        return 2
    rows = run(a.device, a.seconds, not a.no_bf16, batches, vary=a.vary, models=models)
    if a.out:
        write_section(Path(a.out), render(rows, ["scripts/bench_gpu.py", *sys.argv[1:]], name))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
