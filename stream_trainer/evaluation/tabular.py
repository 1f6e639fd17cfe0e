"""``evaluate`` for the tabular kind: our pipeline (the daemon's own code, offline) and
River's models on the same stream, test-then-train one event at a time, with the
fields the pipeline's config declares:

- classification: class prior (running counts: the trivial baseline), River
  ``LogisticRegression`` (binary) or ``SoftmaxRegression`` (multiclass) after a
  ``StandardScaler`` (River's linear model), ``HoeffdingTreeClassifier`` and
  ``ARFClassifier`` (adaptive random forest), the models of River's benchmark tables;
- regression: running mean (the trivial baseline), and after a ``StandardScaler``:
  ``LinearRegression``, ``HoeffdingTreeRegressor`` and ``ARFRegressor``.

Every method is scored on the events our pipeline made an example of: accuracy, log
loss and macro-F1; or MAE and MSE, in the target's own units.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation.offline import pipeline_settings, run_ours
from stream_trainer.evaluation.streams import Stream
from stream_trainer.learner.quality import macro_f1

EPS = 1e-15
TRIVIAL = ("class prior (running counts)", "running mean")


def _features(spec: Any, doc: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """The event's features as River takes them: numbers, and strings (nominal)."""
    if spec.auto:
        return {**ev["n"], **ev["cat"]}
    out: dict[str, Any] = dict(zip(spec.numeric, ev["x"], strict=True))
    out.update(zip(spec.categorical, ev["c"], strict=True))
    return out


def _linear_view(x: dict[str, Any]) -> dict[str, float]:
    """Linear models take numbers: a string becomes a one-hot ``path=value``."""
    return {(f"{k}={v}" if isinstance(v, str) else k): (1.0 if isinstance(v, str) else v)
            for k, v in x.items()}  # fmt: skip


def _river_models(task: str) -> list[tuple[str, Callable[[], Any], bool]]:
    """(name, factory, linear: takes one-hot numbers) of River's models for ``task``."""
    from river import forest, linear_model, preprocessing, tree

    if task == "regression":
        return [
            ("River LinearRegression", lambda: preprocessing.StandardScaler()
             | linear_model.LinearRegression(), True),
            # scaled too: their leaves' linear models diverge on raw units (TrumpApproval)
            ("River HoeffdingTreeRegressor", lambda: preprocessing.StandardScaler()
             | tree.HoeffdingTreeRegressor(), False),
            ("River ARFRegressor", lambda: preprocessing.StandardScaler()
             | forest.ARFRegressor(seed=0), False),
        ]  # fmt: skip
    lin = linear_model.LogisticRegression if task == "binary" else linear_model.SoftmaxRegression
    return [
        (f"River {lin.__name__}", lambda: preprocessing.StandardScaler() | lin(), True),
        ("River HoeffdingTreeClassifier", tree.HoeffdingTreeClassifier, False),
        ("River ARFClassifier", lambda: forest.ARFClassifier(seed=0), False),
    ]


class _Prior:
    """The class prior as the trivial baseline: Laplace-smoothed running counts."""

    def __init__(self) -> None:
        self.counts: dict[Any, float] = {}

    def predict_proba_one(self, x: Any) -> dict[Any, float]:
        total = sum(self.counts.values()) + len(self.counts)
        return {c: (n + 1) / total for c, n in self.counts.items()} if total else {}

    def learn_one(self, x: Any, y: Any) -> None:
        self.counts[y] = self.counts.get(y, 0.0) + 1.0


class _Mean:
    def __init__(self) -> None:
        self.n, self.mean = 0, 0.0

    def predict_one(self, x: Any) -> float:
        return self.mean

    def learn_one(self, x: Any, y: float) -> None:
        self.n += 1
        self.mean += (y - self.mean) / self.n


def _score(task: str, preds: list[Any], truth: list[Any]) -> dict[str, float]:
    if task == "regression":
        err = np.array(preds, np.float64) - np.array(truth, np.float64)
        return {"mae": float(np.mean(np.abs(err))), "mse": float(np.mean(err**2))}
    # preds: dicts label -> probability
    labels = sorted({*truth, *(c for p in preds for c in p)}, key=str)
    code = {c: i for i, c in enumerate(labels)}
    p_true = np.array([p.get(y, 0.0) for p, y in zip(preds, truth, strict=True)])
    guess = np.array([code[max(p, key=p.__getitem__)] if p else -1 for p in preds])
    actual = np.array([code[y] for y in truth])
    return {
        "accuracy": float(np.mean(guess == actual)),
        "log_loss": float(np.mean(-np.log(np.clip(p_true, EPS, 1.0)))),
        "macro_f1": macro_f1(guess, actual),
    }


def compare_tabular(
    stream: Stream, *, config: str | None, trees: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Ours and River's models on ``stream`` (JSON lines of the config's tabular pipeline)."""
    from stream_trainer.domains.decoders import decoder_for
    from stream_trainer.events import Rejected

    say = progress or (lambda msg: None)
    if not config:
        raise StreamTrainerError("evaluate of a tabular stream needs --config naming its pipeline")
    settings = pipeline_settings("tabular", stream, config)
    p = settings.pipelines[0]
    say("ours")
    ours, docs, pipeline = run_ours(stream, settings)
    f = pipeline.featurizer
    task, spec = f.task, f.spec
    decode = decoder_for("tabular", channels=f.channels, max_bytes=p.max_event_bytes)
    events = [decode(r) for r in stream.raw]
    index = sorted(docs)
    scored = set(index)

    def label(ev: dict[str, Any]) -> Any:
        y = ev["y"]
        return f.classes[y] if task == "multiclass" and not isinstance(y, str) else y

    truth = [label(events[i]) for i in index]  # type: ignore[arg-type]
    if task == "regression":
        ours_preds: list[Any] = [docs[i]["prediction"] for i in index]
    elif task == "binary":
        ours_preds = [{1: docs[i]["prediction"], 0: 1 - docs[i]["prediction"]} for i in index]
    else:
        ours_preds = [dict(zip(f.classes, docs[i]["prediction"], strict=False)) for i in index]
    rows = [{"name": f"ours (tabular, batch {p.batch.max_size})", "role": "ours",
             **_score(task, ours_preds, truth), "events_per_s": ours.events_per_s}]  # fmt: skip
    methods: list[tuple[str, Callable[[], Any], bool, str]] = [
        (TRIVIAL[0] if task != "regression" else TRIVIAL[1],
         _Prior if task != "regression" else _Mean, False, "trivial"),
    ]  # fmt: skip
    methods += [(n, m, lin, "learner") for n, m, lin in _river_models(task) if trees or lin]
    for name, make, linear, role in methods:
        say(name)
        model = make()
        preds: list[Any] = []
        t0 = time.perf_counter()
        for i, (raw, ev) in enumerate(zip(stream.raw, events, strict=True)):
            if isinstance(ev, Rejected) or i not in scored:
                continue
            x = _features(spec, json.loads(raw), ev)
            if linear:
                x = _linear_view(x)
            y = label(ev)
            if task == "regression":
                preds.append(float(model.predict_one(x)))
            else:
                preds.append(dict(model.predict_proba_one(x)))
            model.learn_one(x, y)
        seconds = time.perf_counter() - t0
        rows.append({"name": name, "role": role, **_score(task, preds, truth),
                     "events_per_s": len(preds) / seconds if seconds else math.nan})  # fmt: skip
    return {
        "kind": "tabular",
        "task": task,
        "source": stream.source,
        "events": len(stream.raw),
        "rejected": sum(1 for e in events if isinstance(e, Rejected)),
        "scored": len(index),
        "drifts": pipeline.monitor.detections if pipeline.monitor is not None else 0,
        "pipeline": p.model_dump(mode="json", exclude={"topics", "output_topic"}),
        "results": rows,
    }


def markdown(report: dict[str, Any]) -> str:
    """One row per method, ours first."""
    rows = report["results"]
    metrics = [k for k in rows[0] if k not in ("name", "role", "events_per_s")]
    lines = [
        f"**tabular ({report['task']})**: {report['scored']:,} events scored of "
        f"{report['events']:,} ({report['source']}; {report['rejected']} rejected by the "
        f"decoder; our drift detections: {report['drifts']}).",
        "",
        "| method | " + " | ".join(metrics) + " | events/s |",
        "|---|" + "---|" * (len(metrics) + 1),
    ]
    for r in rows:
        cells = [f"{r[m]:.4f}" for m in metrics]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['events_per_s']:,.0f} |")
    return "\n".join(lines)
