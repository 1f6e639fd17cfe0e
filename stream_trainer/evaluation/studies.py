"""Studies of our pipeline alone, offline: how fast each drift policy recovers from a
known drift (``--study adaptation``), and what a replay buffer does when an old concept
returns (``--study replay``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream_trainer.config import Settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation.offline import pipeline_settings, run_ours
from stream_trainer.evaluation.streams import Stream

ADAPTATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "reset_optimizer + boost_lr": ("reset_optimizer", "boost_lr"),
    "reset_model": ("reset_model",),
    "challenger": ("challenger",),
}
RECOVERY_WINDOW = 2000  # events in the rolling loss
RECOVERY_TOLERANCE = 0.05  # within 5% of the pre-drift loss
RETURN_WINDOW = 10_000  # events after the return to A that are compared


def _with(base: Settings, section: str, **update: Any) -> Settings:
    """``base`` with one section of its (single) pipeline updated."""
    spec = base.pipelines[0]
    part = getattr(spec, section).model_copy(update=update)
    return base.model_copy(update={"pipelines": (spec.model_copy(update={section: part}),)})


# ---- adaptation on drift ----------------------------------------------------------------
def recovery(losses: np.ndarray, drift_at: int, window: int = RECOVERY_WINDOW) -> dict[str, float]:
    """Events after ``drift_at`` until the rolling mean loss (over ``window`` events) is
    back within 5% of its mean over the ``5 * window`` events before the drift; the peak
    rolling loss after the drift; the mean loss from the drift on.

    >>> x = np.r_[np.full(20000, 0.5), np.full(3000, 1.0), np.full(7000, 0.5)]
    >>> r = recovery(x, 20000, window=1000)
    >>> r["events_to_recover"], r["peak"]
    (3949.0, 1.0)
    """
    before = losses[max(0, drift_at - 5 * window) : drift_at]
    target = float(before.mean()) * (1.0 + RECOVERY_TOLERANCE)
    c = np.concatenate([[0.0], np.cumsum(losses)])
    ends = np.arange(drift_at + window, losses.size + 1)
    rolling = (c[ends] - c[ends - window]) / window
    ok = np.nonzero(rolling <= target)[0]
    return {
        "pre_drift_loss": float(before.mean()),
        "peak": float(rolling.max()) if rolling.size else math.nan,
        "events_to_recover": float(ends[ok[0]] - drift_at - 1) if ok.size else math.inf,
        "loss_after_drift": float(losses[drift_at:].mean()),
    }


def adaptation(
    stream: Stream, config: str | None = None, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Our pipeline once per adaptation policy on a stream with one known drift."""
    if not stream.drift_at:
        raise StreamTrainerError("the adaptation comparison needs a stream with --drift-at")
    drift_at = stream.drift_at[0]
    say = progress or (lambda msg: None)
    base = pipeline_settings(stream.kind, stream, config)
    rows = []
    for name, actions in ADAPTATIONS.items():
        say(f"adaptation: {name}")
        result, docs, pipeline = run_ours(stream, _with(base, "drift", actions=actions))
        index = sorted(docs)
        losses = np.array([docs[i]["loss"] for i in index])
        position = int(np.searchsorted(index, drift_at))
        race = pipeline.policy.race
        rows.append(
            {
                "policy": name,
                **recovery(losses, position),
                "drift_detections": pipeline.monitor.detections if pipeline.monitor else 0,
                "promotions": race.promotions if race is not None else 0,
                "events_per_s": result.events_per_s,
            }
        )
    return {"kind": stream.kind, "source": stream.source, "drift_at": drift_at, "rows": rows}


# ---- replay on a recurring concept ----------------------------------------------------------
def replay_study(
    stream: Stream,
    capacities: Sequence[int] = (0, 20_000),
    fraction: float = 0.5,
    config: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Our pipeline with and without a replay buffer on an A -> B -> A stream: the loss
    when A comes back (first ``RETURN_WINDOW`` events, and the whole last third)."""
    if len(stream.drift_at) < 2:
        raise StreamTrainerError("the replay study needs a stream that returns to its concept")
    away, back = stream.drift_at[0], stream.drift_at[1]
    say = progress or (lambda msg: None)
    base = pipeline_settings(stream.kind, stream, config)
    rows = []
    for capacity in capacities:
        say(f"replay capacity {capacity}")
        settings = _with(base, "replay", capacity=capacity, fraction=fraction)
        result, docs, _ = run_ours(stream, settings)
        index = np.array(sorted(docs))
        losses = np.array([docs[i]["loss"] for i in index])
        a2 = losses[index >= back]
        rows.append(
            {
                "replay": f"{capacity:,} examples, {fraction} per new one" if capacity else "off",
                "loss_first_a": float(losses[index < away].mean()),
                "loss_b": float(losses[(index >= away) & (index < back)].mean()),
                "loss_return_window": float(a2[:RETURN_WINDOW].mean()),
                "loss_second_a": float(a2.mean()),
                "events_per_s": result.events_per_s,
            }
        )
    return {"source": stream.source, "back_at": back, "rows": rows}
