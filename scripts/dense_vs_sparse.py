"""The click trainer core with sparse embedding gradients (the CPU's default) and with
dense ones (``sparse_embeddings: false``, a GPU's default), side by side in one run: the
bench stream (scripts/bench_runs.py, drift half way), batch 1024, the daemon's
``Learner.step``; prequential log loss and events/s of each, and the loss ratio.

    .venv/bin/python scripts/dense_vs_sparse.py [--events 200000] [--batch 1024] [--repeats 1]

Since both layouts give the tables the same optimizer (Adagrad; learner/optim.py), the
two losses should agree to well within 1 %: BENCHMARKS.md's dense row is this script's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch
from bench_runs import click_events, core_run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each, interleaved (median)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    events = click_events(a.events)
    runs: dict[str, list[tuple[float, float]]] = {"sparse": [], "dense": []}
    for _ in range(a.repeats):  # interleaved: the machine's speed drifts between runs
        for name, sparse in (("sparse", True), ("dense", False)):
            runs[name].append(core_run(events, a.batch, sparse_embeddings=sparse))
    out = {
        name: {
            "events_per_s": statistics.median(r for r, _ in rs),
            "log_loss": statistics.median(ll for _, ll in rs),
        }
        for name, rs in runs.items()
    }
    ratio = out["dense"]["log_loss"] / out["sparse"]["log_loss"]
    print(f"{'embedding gradients':<20} {'log loss':>9} {'events/s':>10}")
    for name, o in out.items():
        print(f"{name:<20} {o['log_loss']:>9.4f} {o['events_per_s']:>10,.0f}")
    verdict = "within" if abs(ratio - 1) <= 0.01 else "NOT within"
    print(f"dense / sparse log loss: {ratio:.4f} ({verdict} 1 %)")
    print(json.dumps({**out, "ratio": ratio, "events": a.events, "batch": a.batch}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
