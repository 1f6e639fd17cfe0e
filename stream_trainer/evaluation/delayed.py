"""The cost of delay (``evaluate --study delayed-labels``): one click stream learned with
its labels inline, and again as impressions whose clicks come 1 s to 10 min later
(heavy-tailed) and whose non-clicks are known only when the 15-minute window ends.

Ours runs the daemon's own joiner (``labels:``, ``on_expiry: negative``). River's
``LogisticRegression`` runs through ``progressive_val_score`` with labels inline, with
each event's own delay (its click's, or the window for an unclicked one), and with every
label at the window's end. Every method scores an event with the prediction made when
the event came (the impression), and all are scored on the same events: those before
the first impression still pending when the stream ends (after it, only clicks are
known). Delays are event time: the generated clicks are 0.05 s apart (20 events/s, a
100k-event stream spans 5,000 s), so a 10-minute click is 12,000 events late and the
window 18,000.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

import numpy as np

from stream_trainer.config import Settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation.baselines import click_tokens
from stream_trainer.evaluation.offline import pipeline_settings, run_ours
from stream_trainer.evaluation.reporting import score
from stream_trainer.evaluation.streams import Stream
from stream_trainer.pipeline.ports import Record
from stream_trainer.pipeline_config import LabelSettings
from stream_trainer.producers.delayed import IMPRESSION, delayed_labels

WINDOW_S = 900.0  # how long an impression waits for its click (event time)
MIN_DELAY_S, MAX_DELAY_S = 1.0, 600.0  # a click's delay: Pareto(1) from 1 s, clipped
IMPRESSIONS, LABELS = "evaluate", "evaluate.labels"


def delayed_records(
    stream: Stream,
    seed: int = 0,
    min_delay_s: float = MIN_DELAY_S,
    max_delay_s: float = MAX_DELAY_S,
    window_s: float = WINDOW_S,
) -> tuple[list[Record], np.ndarray]:
    """The stream as the joiner's consumer reads it: impressions (offset = event index)
    and labels in event-time order; and each event's delay until its label is known
    (its click's delay, or ``window_s`` for an unclicked one)."""
    docs = [json.loads(r) for r in stream.raw]  # the producer's documents (study() checked them)
    ts = np.array([float(d["ts"]) for d in docs])
    delay = np.full(len(docs), window_s)
    records: list[Record] = []
    n_imp = n_lab = 0
    merged = delayed_labels(
        docs, seed=seed, min_delay_s=min_delay_s, max_delay_s=max_delay_s, id_prefix=""
    )
    for kind, doc in merged:
        raw = json.dumps(doc, separators=(",", ":")).encode()
        if kind == IMPRESSION:
            records.append(Record(IMPRESSIONS, 0, n_imp, 0, None, raw))
            n_imp += 1
        else:
            i = int(doc["request_id"])
            delay[i] = doc["ts"] - ts[i]
            records.append(Record(LABELS, 0, n_lab, 0, None, raw))
            n_lab += 1
    return records, delay


def with_labels(settings: Settings, window_s: float = WINDOW_S) -> Settings:
    """``settings``' pipeline reading impressions, with labels joined over ``window_s``."""
    spec = settings.pipelines[0]
    labels = LabelSettings(
        topic=LABELS, window_s=window_s, on_expiry="negative", max_pending=10_000_000
    )
    return settings.model_copy(update={"pipelines": (spec.model_copy(update={"labels": labels}),)})


def river_logistic(
    events: Sequence[dict[str, Any]], ts: np.ndarray, delay: np.ndarray | None = None
) -> tuple[dict[int, float], float]:
    """River's ``LogisticRegression`` (the click baseline's features) through
    ``progressive_val_score``: labels inline, or each one revealed ``delay[i]`` seconds
    after ``ts[i]``. Its prediction per event index (made when the event came), and the
    time taken."""
    from river import evaluate, linear_model, metrics

    tapped = _tapped(linear_model.LogisticRegression())
    data = (({**click_tokens(ev), _INDEX: i}, bool(ev["label"])) for i, ev in enumerate(events))
    when: dict[str, Any] = {}
    if delay is not None:
        when = {
            "moment": lambda x: float(ts[x[_INDEX]]),
            "delay": lambda x, y: float(delay[x[_INDEX]]),
        }
    t0 = time.perf_counter()
    # River types x as dict[Hashable, Any] (not a Mapping): a dict[str, ...] is refused
    evaluate.progressive_val_score(data, tapped, metrics.LogLoss(), **when)  # type: ignore[arg-type]
    return tapped.preds, time.perf_counter() - t0


_INDEX = "__event_index"  # carried in River's x to name the event; never a feature


def _strip(x: dict[Hashable, Any]) -> dict[Hashable, Any]:
    return {k: v for k, v in x.items() if k != _INDEX}


def _tapped(model: Any) -> Any:
    """``model`` as a River classifier whose predictions are kept by event index in
    ``.preds`` (River's own metrics see the answers, not which event each one was)."""
    from river import base

    class Tapped(base.Classifier):
        def __init__(self, model: Any) -> None:
            self.model = model
            self.preds: dict[int, float] = {}

        def predict_proba_one(
            self, x: dict[base.typing.FeatureName, Any], **kwargs: Any
        ) -> dict[base.typing.ClfTarget, float]:
            proba = self.model.predict_proba_one(_strip(x), **kwargs)
            self.preds[x[_INDEX]] = proba.get(True, 0.5)
            return proba

        def learn_one(
            self, x: dict[base.typing.FeatureName, Any], y: base.typing.ClfTarget
        ) -> None:
            self.model.learn_one(_strip(x), y)

    return Tapped(model)


def study(
    stream: Stream,
    *,
    config: str | None = None,
    seed: int = 0,
    window_s: float = WINDOW_S,
    max_delay_s: float = MAX_DELAY_S,
    river: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ours with labels inline and through the joiner; River's logistic regression with
    labels inline, each label as it comes, and every label at the window's end."""
    if stream.kind != "clicks":
        raise StreamTrainerError("the delayed-labels study needs a click stream (--kind clicks)")
    say = progress or (lambda msg: None)
    n = len(stream.raw)
    events = cast(list[dict[str, Any]], stream.events)  # all valid: checked next
    if any(ev is None for ev in events):
        raise StreamTrainerError("the delayed-labels study needs a stream of valid clicks only")
    ts = np.array([float(ev["ts"]) for ev in events])
    if not n or ts[-1] - ts[0] <= window_s:  # before building the joined stream
        raise StreamTrainerError(_too_short(ts, window_s))
    records, delay = delayed_records(stream, seed=seed, max_delay_s=max_delay_s, window_s=window_s)
    settings = pipeline_settings("clicks", stream, config)
    say("ours, labels inline")
    inline, inline_docs, _ = run_ours(stream, settings)
    say("ours, delayed labels (the joiner)")
    late, late_docs, pipeline = run_ours(stream, with_labels(settings, window_s), records)
    # scored: the events whose label is known either way (a still pending impression is
    # unclicked so far: scoring only the clicks of the last window would favour clicks)
    pending = pipeline.joiner.pending.values()
    cutoff = min((w.event["ts"] for w in pending), default=math.inf)
    index = [i for i in sorted(inline_docs) if ts[i] < cutoff]
    if not index:
        raise StreamTrainerError(_too_short(ts, window_s))
    unresolved = [i for i in index if i not in late_docs]
    if unresolved:
        raise RuntimeError(f"the joiner left {len(unresolved)} events before {cutoff} unresolved")
    runs: list[tuple[str, str, dict[int, float], float]] = [
        (inline.name, INLINE, {i: inline_docs[i]["prediction"] for i in index}, inline.seconds),
        (late.name, JOINER, {i: late_docs[i]["prediction"] for i in index}, late.seconds),
    ]
    if river:
        for labels, wait in ((INLINE, None), (AS_THEY_COME, delay),
                             (AT_WINDOW_END, np.full(n, window_s))):  # fmt: skip
            say(f"{RIVER}, labels {labels}")
            runs.append((RIVER, labels, *river_logistic(events, ts, wait)))
    truth = {i: (inline_docs[i]["target"], 0.0) for i in index}
    after = [i for i in index if ts[i] >= ts[0] + window_s]
    rows = []
    for name, labels, preds, seconds in runs:
        m = score("clicks", preds, truth, index)
        m["log_loss_after_window"] = score("clicks", preds, truth, after)["log_loss"]
        rows.append({"name": name, "labels": labels, **m, "events_per_s": n / seconds})
    clicked = delay[delay < window_s]
    counts = pipeline.joiner.counts
    return {
        "source": stream.source,
        "events": n,
        "scored": len(index),
        "span_s": float(ts[-1] - ts[0]) if n else 0.0,
        "window_s": window_s,
        "click_delay_s": {
            q: float(np.quantile(clicked, v)) if clicked.size else math.nan
            for q, v in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "joiner": {
            **{k: counts[k] for k in ("labelled", "negative", "late")},
            "held": pipeline.joiner.held,  # labelled, their window not over
            "pending": len(pipeline.joiner.pending) - pipeline.joiner.held,  # no label yet
        },
        "rows": rows,
        "ratios": ratios(rows),
    }


def _too_short(ts: np.ndarray, window_s: float) -> str:
    span = float(ts[-1] - ts[0]) if ts.size else 0.0
    return (
        f"the stream spans {span:,.0f} s of event time, no more than the labels' window "
        f"({window_s:,.0f} s): no impression's label would be known either way (more events)"
    )


INLINE, JOINER = "inline", "delayed (our joiner)"
AS_THEY_COME, AT_WINDOW_END = "delayed, each as it comes", "delayed, all at the window's end"
RIVER = "River LogisticRegression (one-hot + user x item)"
METRICS = ("log_loss", "log_loss_after_window", "auc")


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each delayed row / the same method's inline row, on log loss and AUC."""
    inline = {r["name"]: r for r in rows if r["labels"] == INLINE}
    out = []
    for r in rows:
        a = inline.get(r["name"])
        if r["labels"] != INLINE and a is not None:
            out.append({"name": r["name"], "labels": r["labels"],
                        **{m: r[m] / a[m] if a[m] else math.nan for m in METRICS}})  # fmt: skip
    return out


def markdown(report: dict[str, Any]) -> str:
    """The study's table: each method with inline and delayed labels, and the ratios."""
    d = report["click_delay_s"]
    j = report["joiner"]
    w = report["window_s"]
    lines = [
        f"**clicks, delayed labels**: {report['scored']:,} events scored of "
        f"{report['events']:,} ({report['source']}; {report['span_s']:,.0f} s of event time, "
        f"{report['events'] / max(report['span_s'], 1e-9):,.0f} events/s). Clicks come "
        f"p50 {d['p50']:.1f} s / p90 {d['p90']:.0f} s / p99 {d['p99']:.0f} s / max "
        f"{d['max']:.0f} s late; an unclicked impression is a negative after {w:.0f} s. "
        f"Joiner: {j['labelled']:,} labelled ({j['held']:,} of them not trained yet at the "
        f"end), {j['negative']:,} negative, {j['late']:,} late labels, {j['pending']:,} "
        "without a label at the end (not scored from the first of them on).",
        "",
        f"| method | labels | log_loss | log_loss after the first {w:.0f} s | auc | "
        "mean_predicted | observed_rate | events/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['name']} | {r['labels']} | {r['log_loss']:.4f} | "
            f"{r['log_loss_after_window']:.4f} | {r['auc']:.4f} | {r['mean_predicted']:.4f} | "
            f"{r['observed_rate']:.4f} | {r['events_per_s']:,.0f} |"
        )
    lines += ["", "Delayed / inline (the cost of delay):", ""]
    for r in report["ratios"]:
        lines.append(
            f"- {r['name']}, {r['labels']}: log loss {r['log_loss']:.3f} (after the first "
            f"{w:.0f} s: {r['log_loss_after_window']:.3f}), AUC {r['auc']:.3f}."
        )
    return "\n".join(lines)
