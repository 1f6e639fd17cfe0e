"""`stream-trainer evaluate` (``--study compare``, the default): our pipeline and the
baselines on one stream, side by side.

Offline, no broker. Our side is the daemon's own code (:mod:`.offline`); the baselines
(:mod:`.baselines`) see the same decoded events, in the same order. Every method is
scored on the same events: those our featurizer makes an example of (ticks and sensors
skip each key's first readings).
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from stream_trainer.evaluation.baselines import run_baselines
from stream_trainer.evaluation.kinds import traits
from stream_trainer.evaluation.offline import Result, pipeline_settings, run_ours
from stream_trainer.evaluation.reporting import score
from stream_trainer.evaluation.streams import Stream


def compare(
    stream: Stream,
    *,
    config: str | None = None,
    vw: bool = True,
    trees: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ours and the baselines; ``trees``: River's Hoeffding adaptive trees too (the
    slowest baselines by far: ~5k clicks/s, a few hundred sensor readings/s here)."""
    say = progress or (lambda msg: None)
    # The stream (a million events is millions of objects) lives to the end: out of the
    # collector's sight, or every full collection walks it (as the daemon does at start).
    gc.collect()
    gc.freeze()
    settings = pipeline_settings(stream.kind, stream, config)
    spec = settings.pipelines[0]
    say("ours")
    ours, docs, pipeline = run_ours(stream, settings)
    index = sorted(docs)
    truth = {i: (docs[i]["target"], docs[i]["loss"]) for i in index}
    results = [ours]
    ours.metrics = score(stream.kind, {i: docs[i]["prediction"] for i in index}, truth, index)
    if traits(stream.kind).anomaly_rate:
        flags = [bool(docs[i].get("anomaly")) for i in index]
        ours.metrics["anomaly_rate"] = float(np.mean(flags)) if flags else math.nan
    baselines = run_baselines(stream, spec.featurizer, vw=vw, trees=trees, say=say)
    for name, preds, seconds in baselines:
        missing = [i for i in index if i not in preds]
        if missing:
            raise RuntimeError(f"{name}: no prediction for {len(missing)} scored events")
        results.append(Result(name, score(stream.kind, preds, truth, index), seconds, len(preds)))
    return {
        "kind": stream.kind,
        "source": stream.source,
        "events": len(stream.raw),
        "rejected": sum(1 for e in stream.events if e is None),
        "scored": len(index),
        "drifts": pipeline.monitor.detections if pipeline.monitor is not None else 0,
        "pipeline": spec.model_dump(mode="json", exclude={"topics", "output_topic"}),
        "results": [{"name": r.name, **r.metrics, "events_per_s": r.events_per_s} for r in results],
    }
