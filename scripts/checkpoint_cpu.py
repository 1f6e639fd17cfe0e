"""What a periodic checkpoint costs the click pipeline's trainer: the copy that training
goes on beside (``checkpoint.store.snapshot``) against the whole save (``torch.save`` to
a temp file, fsync, rename: what the trainer's thread did before the write moved to a
thread of its own), on the default clicks pipeline after it trained ``--events``;
medians of ``--rounds``, milliseconds.

    .venv/bin/python scripts/checkpoint_cpu.py [--events 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from stream_trainer.checkpoint.store import snapshot
from stream_trainer.config import parse_settings
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.producers.generators import make_generator


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        pipeline = {"name": "clicks", "kind": "clicks", "topics": ["t"]}
        s = parse_settings({"checkpoint": {"dir": work}, "device": "cpu", "pipelines": [pipeline]})
        p = Pipeline(s, s.pipelines[0])
        events = list(make_generator("clicks", seed=1, count=a.events))
        for i in range(0, len(events), 256):  # trained: the optimizer state is all there
            fb = p.featurizer.featurize(events[i : i + 256])
            p.learner.step(fb.inputs, fb.targets)
        ms: dict[str, list[float]] = {"copy (the trainer's part now)": [], "save (before)": []}
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            doc = snapshot(p.state())
            t1 = time.perf_counter()
            p.store.save(doc)
            t2 = time.perf_counter()
            ms["copy (the trainer's part now)"].append(1000 * (t1 - t0))
            ms["save (before)"].append(1000 * (t2 - t1))
        mb = sum(f.stat().st_size for f in p.store.files()) / len(p.store.files()) / 1e6
    print(json.dumps({"ms": {k: round(statistics.median(v), 1) for k, v in ms.items()},
                      "checkpoint_mb": round(mb, 1), "events": a.events}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
