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

from stream_trainer.evaluation.baselines import TRIVIAL_NAMES, run_baselines
from stream_trainer.evaluation.kinds import traits
from stream_trainer.evaluation.offline import Result, pipeline_settings, run_ours
from stream_trainer.evaluation.reporting import PRIMARY, profile_of, score
from stream_trainer.evaluation.streams import Stream

WARM_UP = 1_000  # the bar holds from this event on (a cold start's first events aside)


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
    late = [i for i in index if i >= WARM_UP]
    primary = PRIMARY[profile_of(stream.kind)]
    results = [ours]
    ours_preds = {i: docs[i]["prediction"] for i in index}
    ours.metrics = score(stream.kind, ours_preds, truth, index)
    ours.metrics[f"{primary}_from_{WARM_UP}"] = _late(stream.kind, ours_preds, truth, late)
    if traits(stream.kind).anomaly_rate:
        flags = [bool(docs[i].get("anomaly")) for i in index]
        ours.metrics["anomaly_rate"] = float(np.mean(flags)) if flags else math.nan
    baselines = run_baselines(stream, spec.featurizer, vw=vw, trees=trees, say=say)
    for name, preds, seconds in baselines:
        missing = [i for i in index if i not in preds]
        if missing:
            raise RuntimeError(f"{name}: no prediction for {len(missing)} scored events")
        metrics = score(stream.kind, preds, truth, index)
        metrics[f"{primary}_from_{WARM_UP}"] = _late(stream.kind, preds, truth, late)
        results.append(Result(name, metrics, seconds, len(preds)))
        results[-1].note = "trivial" if name in TRIVIAL_NAMES else "learner"
    return {
        "kind": stream.kind,
        "source": stream.source,
        "events": len(stream.raw),
        "rejected": sum(1 for e in stream.events if e is None),
        "scored": len(index),
        "drifts": pipeline.monitor.detections if pipeline.monitor is not None else 0,
        "pipeline": spec.model_dump(mode="json", exclude={"topics", "output_topic"}),
        "results": [
            {"name": r.name, **r.metrics, "events_per_s": r.events_per_s, "role": r.note or "ours"}
            for r in results
        ],
        "bar": bars(results, f"{primary}_from_{WARM_UP}"),
    }


def _late(kind: str, preds: dict[int, Any], truth: dict, late: list[int]) -> float:
    """The primary metric over the events from ``WARM_UP`` on (NaN when there are none)."""
    if not late:
        return math.nan
    return score(kind, preds, truth, late)[PRIMARY[profile_of(kind)]]


def bars(results: list[Result], metric: str) -> dict[str, float | str]:
    """Ours / the best trivial baseline, and ours / the best learner (River, VW), on
    ``metric`` (lower is better)."""
    ours = results[0].metrics[metric]

    def best(role: str) -> float:
        vals = [r.metrics[metric] for r in results[1:] if r.note == role]
        vals = [v for v in vals if not math.isnan(v)]
        return min(vals) if vals else math.nan

    trivial, learner = best("trivial"), best("learner")
    return {
        "metric": metric,
        "best_trivial": trivial,
        "best_learner": learner,
        "vs_trivial": ours / trivial if trivial else math.nan,
        "vs_learner": ours / learner if learner else math.nan,
    }
