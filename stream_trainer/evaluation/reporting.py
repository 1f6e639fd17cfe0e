"""Scoring predictions, and the markdown tables of every evaluation (the JSON is the
report dicts themselves); the drift suite's tables live with the suite (drift_suite.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from stream_trainer.evaluation.kinds import traits
from stream_trainer.evaluation.studies import RECOVERY_TOLERANCE, RECOVERY_WINDOW, RETURN_WINDOW
from stream_trainer.learner.quality import Quality, profile_for

EPS = 1e-15
PRIMARY = {"binary": "log_loss", "direction": "mse", "regression": "mse"}


# ---- scoring ------------------------------------------------------------------------------
def profile_of(kind: str) -> str:
    """The quality profile (which metrics) of ``kind``'s predictions."""
    return profile_for(kind, traits(kind).task)


def score(
    kind: str,
    preds: dict[int, Any],
    truth: dict[int, tuple[Any, float]],
    index: Sequence[int],
    anomaly_threshold: float | None = None,
) -> dict[str, float]:
    """Metrics of ``preds`` against the truth over the events in ``index`` (in order)."""
    prof = profile_of(kind)
    q = Quality(prof, window=max(1, len(index)))
    p = np.array([np.atleast_1d(preds[i]) for i in index], np.float64)
    y = np.array([np.atleast_1d(truth[i][0]) for i in index], np.float64)
    if prof == "binary":
        pc = np.clip(p[:, 0], EPS, 1 - EPS)
        losses = -(y[:, 0] * np.log(pc) + (1 - y[:, 0]) * np.log(1 - pc))
    else:
        losses = np.mean((p - y) ** 2, axis=1)
    q.update(p, y, losses)
    values = q.values()
    if prof == "regression":  # normalised_mse / anomaly_rate are ours only
        values.pop("normalized_mse", None)
        values.pop("anomaly_rate", None)
    return values


# ---- the comparison -----------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    """The comparison's table: one row per method, ours first."""
    rows = report["results"]
    metrics = [k for k in rows[0] if k not in ("name", "events_per_s", "role")]
    primary = PRIMARY[profile_of(report["kind"])]
    baseline_best = min(
        (r[primary] for r in rows[1:] if not math.isnan(r.get(primary, math.nan))),
        default=math.nan,
    )
    lines = [
        f"**{report['kind']}**: {report['scored']:,} events scored of {report['events']:,} "
        f"({report['source']}; {report['rejected']} rejected by the decoder; our drift "
        f"detections: {report['drifts']}).",
        "",
        "| method | " + " | ".join(metrics) + " | events/s |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    for r in rows:
        cells = [_fmt(r.get(m, math.nan)) for m in metrics]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['events_per_s']:,.0f} |")
    ours = rows[0][primary]
    if not math.isnan(baseline_best):
        lines += [
            "",
            f"Ours / best baseline {primary}: {ours / baseline_best:.3f}.",
        ]
    bar = report.get("bar")
    if bar and not math.isnan(bar["vs_trivial"]):
        learner = (
            f"; / the best of River and VW: {bar['vs_learner']:.3f}"
            if not math.isnan(bar["vs_learner"])
            else ""
        )
        lines.append(
            f"From event 1,000 on ({bar['metric']}): ours / the best trivial baseline: "
            f"{bar['vs_trivial']:.3f}{learner}."
        )
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    a = abs(v)
    return f"{v:.3e}" if (a and (a < 1e-3 or a >= 1e5)) else f"{v:.4f}"


# ---- the studies --------------------------------------------------------------------------
def adaptation_markdown(report: dict[str, Any]) -> str:
    """The adaptation study's table: one row per drift policy."""
    rows = report["rows"]
    none = rows[0]["events_to_recover"]
    lines = [
        f"**{report['kind']}**, drift at event {report['drift_at']:,} ({report['source']}): "
        f"events until the rolling loss ({RECOVERY_WINDOW:,} events) is back within "
        f"{RECOVERY_TOLERANCE:.0%} of the pre-drift loss.",
        "",
        "| policy on drift | events to recover | vs none | peak rolling loss | mean loss "
        "after drift | detections | challenger promotions |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        n = r["events_to_recover"]
        vs = f"{n / none:.2f} ×" if math.isfinite(n) and math.isfinite(none) and none else "n/a"
        shown = f"{n:,.0f}" if math.isfinite(n) else "not recovered"
        lines.append(
            f"| {r['policy']} | {shown} | {vs} | {r['peak']:.4f} | {r['loss_after_drift']:.4f} "
            f"| {r['drift_detections']} | {r['promotions']} |"
        )
    return "\n".join(lines)


def replay_markdown(report: dict[str, Any]) -> str:
    """The replay study's table: one row per buffer size."""
    lines = [
        f"A -> B -> A ({report['source']}); A returns at event {report['back_at']:,}.",
        "",
        f"| replay | loss on A (first) | loss on B | loss on A again, first {RETURN_WINDOW:,} "
        "events | loss on A again, all | events/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['replay']} | {r['loss_first_a']:.4f} | {r['loss_b']:.4f} | "
            f"{r['loss_return_window']:.4f} | {r['loss_second_a']:.4f} | "
            f"{r['events_per_s']:,.0f} |"
        )
    return "\n".join(lines)
