"""`make bench-ab BASE=<rev>`: `scripts/bench.py` on two commits in one run, alternating.

The machine is shared and noisy, so one tree measured after the other says little: this
runs each tree's own benchmark script (the base in a temporary git worktree) in turns,
``--rounds`` times, and prints the medians side by side with their ratio. Ratios
against the bare client in the same bench run (``e2e / client``) are the figures to
compare; absolute rates move with the machine.

    .venv/bin/python scripts/bench_ab.py --base 93b9173 [--rounds 3] [-- BENCH ARGS]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
QUICK = "pipeline CPU, us/event (no Kafka)"
DEFAULT_BENCH = ["--events", "100000", "--repeats", "1", "--rates", "1000,5000,20000",
                 "--latency-seconds", "8"]  # fmt: skip


def run_bench(tree: Path, args: list[str], out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "scripts/bench.py", "--out", str(out.with_suffix(".md")),
           "--json", str(out), *args]  # fmt: skip
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=sys.stderr)
    return json.loads(out.read_text())


def figures(r: dict[str, Any]) -> dict[str, float]:
    """The rows compared: rates, ratios to the client in the same run, latency."""
    med = statistics.median
    client = med(r["client_decode"])
    out = {"client consume + decode, events/s": client}
    for kind, runs in r["e2e"].items():
        out[f"daemon {kind}, events/s"] = med(runs)
        out[f"daemon {kind} / client"] = med(runs) / client
        out[f"daemon {kind} RSS, MB"] = med(r["rss"][kind])
    for bs, v in r["core"].items():
        out[f"trainer core batch {bs}, events/s"] = med(v["rate"])
    for stage, us in r.get("profile", {}).items():  # the clicks daemon's stages, in process
        out[f"stage: {stage}, us/event"] = us
    for rate, runs in r["latency"].items():
        out[f"p99 latency at {rate}/s, ms"] = med([x["p99"] for x in runs])
        out[f"p50 latency at {rate}/s, ms"] = med([x["p50"] for x in runs])
    return out


def load(path: Path) -> dict[str, float]:
    """A finished run's figures, from its JSON (a bench run, or a ``--quick`` one)."""
    r = json.loads(path.read_text())
    return {QUICK: r["cpu_us_per_event"]} if "cpu_us_per_event" in r else figures(r)


def run_quick(tree: Path, out: Path) -> dict[str, Any]:
    """This tree's ``scripts/pipeline_cpu.py`` run against ``tree``'s package."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(ROOT / "scripts" / "pipeline_cpu.py")]
    r = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    out.write_text(r.stdout)
    return json.loads(r.stdout)


def measure(
    base: str, rounds: int, bench_args: list[str], work: Path, quick: bool = False
) -> dict[str, list]:
    """Both trees, alternating; the base in a temporary git worktree."""
    base_tree = work / "base"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), base],
                   cwd=ROOT, check=True, stdout=sys.stderr)  # fmt: skip
    results: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
    try:
        for i in range(rounds):
            for name, tree in (("base", base_tree), ("head", ROOT)):
                print(f"[bench-ab] round {i + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
                out = work / f"{name}{i}.json"
                if quick:
                    cpu = run_quick(tree, out)["cpu_us_per_event"]
                    results[name].append({QUICK: cpu})
                else:
                    results[name].append(figures(run_bench(tree, bench_args, out)))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each tree, alternating")
    ap.add_argument("--again", metavar="DIR", help="re-render a finished run's JSON files")
    ap.add_argument(
        "--quick", action="store_true", help="only the pipeline's CPU/event (pipeline_cpu.py)"
    )
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- then bench.py's arguments")
    a = ap.parse_args()
    bench_args = [x for x in a.bench if x != "--"] or DEFAULT_BENCH
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    if a.again:
        work = Path(a.again)
        head = f"{head}, re-rendered"  # the runs measured the HEAD of their day
        results = {n: [load(work / f"{n}{i}.json") for i in range(a.rounds)]
                   for n in ("base", "head")}  # fmt: skip
    else:
        work = Path(tempfile.mkdtemp(prefix="bench-ab-"))
        results = measure(a.base, a.rounds, bench_args, work, quick=a.quick)
    print(f"[bench-ab] JSON of every run in {work}", file=sys.stderr)
    args = "--quick" if a.quick else f"-- {' '.join(bench_args)}"
    print(
        f"Command: `scripts/bench_ab.py --base {a.base} --rounds {a.rounds} {args}` "
        f"(head {head}; medians of {a.rounds} alternating runs)\n"
    )
    print("Medians of each tree, their ratio, and the median of the ratios within a round")
    print("(a round runs both back to back: the machine's slow and fast spells cancel).\n")
    print(f"| figure | base {a.base} | head {head} | head / base | paired: median of ratios |")
    print("|---|---:|---:|---:|---:|")
    for key in results["head"][0]:
        pairs = [(b[key], h[key]) for b, h in zip(results["base"], results["head"], strict=True)
                 if key in b and key in h and b[key]]  # fmt: skip
        b = statistics.median(x for x, _ in pairs)
        h = statistics.median(y for _, y in pairs)
        paired = statistics.median(y / x for x, y in pairs)
        fmt = (lambda v: f"{v:.3f}") if "/ client" in key else (lambda v: f"{v:,.1f}")
        print(f"| {key} | {fmt(b)} | {fmt(h)} | {h / b:.3f} | {paired:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
