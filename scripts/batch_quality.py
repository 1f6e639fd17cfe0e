"""Prequential loss of our pipeline (evaluate's code path, the defaults but the batch
size) on one generated stream at batch sizes 256, 512 and 1024: what a larger batch
costs in learning per event. Why ``batch.max_size`` stays 256 by default.

    .venv/bin/python scripts/batch_quality.py --kind ticks --events 100000
"""

from __future__ import annotations

import argparse

import numpy as np

from stream_trainer.evaluation.offline import pipeline_settings, run_ours
from stream_trainer.evaluation.streams import generated


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", default="ticks")
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--sizes", default="256,512,1024")
    a = ap.parse_args()
    stream = generated(a.kind, a.events, seed=0, drift_at=a.events // 2)
    base = None
    for size in (int(x) for x in a.sizes.split(",")):
        s = pipeline_settings(a.kind, stream)
        spec = s.pipelines[0]
        spec = spec.model_copy(update={"batch": spec.batch.model_copy(update={"max_size": size})})
        _, docs, _ = run_ours(stream, s.model_copy(update={"pipelines": (spec,)}))
        loss = float(np.mean([d["loss"] for d in docs.values()]))
        base = base or loss
        print(f"{a.kind} batch {size}: mean prequential loss {loss:.5g} ({loss / base - 1:+.1%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
