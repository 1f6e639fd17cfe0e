"""A/B of the replicas' ingest workers: the daemon under torchrun with ``ingest.workers``
0 (each replica fetches and decodes in its trainer's thread) and ``auto``, interleaved on
one broker and one topic, medians of ``--repeats``.

    .venv/bin/python scripts/replicas_ingest_ab.py [--events 150000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics

from bench_replicas import click_topic, one_run

ROWS = [(1, "-", "auto"), (2, "allreduce", 0), (2, "allreduce", "auto"),
        (2, "average", 0), (2, "average", "auto")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    rates: dict[tuple, list[float]] = {row: [] for row in ROWS}
    with click_topic(a.events) as (bootstrap, topic, work):
        for k in range(a.repeats):
            for nproc, mode, ingest in ROWS:
                r = one_run(bootstrap, topic, a.events, nproc, mode, True, work, ingest)
                rates[(nproc, mode, ingest)].append(r)
                print(f"run {k + 1}: {nproc} x {mode}, ingest.workers {ingest}: {r:,.0f}/s")
    one = statistics.median(rates[ROWS[0]])
    print("\n| replicas | sync | ingest.workers | events/s (median) | runs | vs 1 replica |")
    print("|---:|---|---|---:|---|---:|")
    for (nproc, mode, ingest), v in rates.items():
        med = statistics.median(v)
        runs = ", ".join(f"{x:,.0f}" for x in v)
        print(f"| {nproc} | {mode} | {ingest} | {med:,.0f} | {runs} | {med / one:.2f}× |")


if __name__ == "__main__":
    main()
