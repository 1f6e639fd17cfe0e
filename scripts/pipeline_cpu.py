"""CPU time per event of the pipeline's own work, without Kafka: decode, validation,
dedup, batching, featurizing, the training step and the bookkeeping around it.

Records are built in memory and fed through ``Pipeline.handle`` and ``pump``, with the
daemon's batching (up to 1024 events or 10 ms); the figure is process CPU time, which
other processes on a shared machine disturb less than wall time does. It imports
whichever stream_trainer is first on ``PYTHONPATH``, so ``bench_ab.py --quick`` can run it
against two commits (it knows the module paths from before and after the pipeline/
package).

    .venv/bin/python scripts/pipeline_cpu.py [--events 60000] [--kind clicks]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from stream_trainer.config import parse_settings
from stream_trainer.producers import make_generator

try:  # the pipeline/ package
    from stream_trainer.pipeline.core import Pipeline
    from stream_trainer.pipeline.ports import Record
except ImportError:  # before it
    from stream_trainer.edges import Record  # type: ignore[no-redef]
    from stream_trainer.pipeline import Pipeline  # type: ignore[no-redef,attr-defined]


def predecoded(p: Pipeline, poll: list) -> list:
    """``poll`` as an ingest worker hands it over: decoded, with duplicate digests."""
    from stream_trainer.edges.ingest import DecodedPoll
    from stream_trainer.events.dedup import digest

    out = DecodedPoll(poll)
    out.decoded = p.decode([r.value for r in poll])
    out.digests = [digest(r.value) for r in poll]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--kind", default="clicks")
    ap.add_argument("--batch", type=int, default=256, help="batch.max_size")
    ap.add_argument(
        "--workers",
        action="store_true",
        help="the trainer's share only: polls arrive decoded, as ingest workers send them",
    )
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    a = ap.parse_args()
    torch.set_num_threads(1)
    settings = parse_settings(
        {
            "checkpoint": {"dir": "/tmp/pipeline-cpu-unused", "every_seconds": 3600},
            "device": "cpu",
            "pipelines": [{"name": "p", "kind": a.kind, "topics": ["t"],
                           "batch": {"max_size": a.batch, "max_latency_ms": 10}}],
        }
    )  # fmt: skip
    p = Pipeline(settings, settings.pipelines[0])
    raw = [json.dumps(e).encode() for e in make_generator(a.kind, seed=7, count=a.events)]
    now_ms = int(time.time() * 1000)
    # two partitions; a poll holds 250 records of each, grouped by partition as Kafka's are
    parts = [[Record("t", k, i, now_ms, None, v) for i, v in enumerate(raw[k::2])] for k in (0, 1)]
    polls = [parts[0][i : i + 250] + parts[1][i : i + 250] for i in range(0, len(parts[0]), 250)]
    if a.workers:
        polls = [predecoded(p, poll) for poll in polls]
    warm = len(polls) // 10
    for poll in polls[:warm]:
        p.handle(poll)
        p.pump()
    p.flush()
    prof = None
    if a.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.process_time()
    for poll in polls[warm:]:
        p.handle(poll)
        p.pump()
    p.flush()
    cpu = time.process_time() - t0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    n = sum(len(x) for x in polls[warm:])
    print(json.dumps({"cpu_us_per_event": cpu / n * 1e6, "events": n}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
