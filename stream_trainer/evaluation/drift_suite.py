"""`stream-trainer evaluate --drift-suite`: drift detectors scored on streams whose
change points are known.

Streams: river's synthetic generators with their drift positions (SEA, STAGGER and
Agrawal with abrupt concept changes, Hyperplane with a gradual one, FriedmanDrift for
regression) and our producers' drifts (clicks, ticks, sensors). For each stream one
fixed online learner gives a per-event error — prequential (predict, then learn), never
reset by a detection, so that every detector sees exactly the same stream:

* river streams: River's LogisticRegression (0/1 error) or LinearRegression (absolute
  error) behind a StandardScaler (a one-hot encoder for STAGGER's categories);
* our streams: our pipeline, its drift monitor off, giving its per-event loss.

Detectors: river ADWIN at its defaults on the per-event error (the baseline the issue
asks for), and ours — each river detector on the calibrated block signal of
:mod:`stream_trainer.drift.monitor`, as the daemon runs them. The input monitor runs on
the river streams' features too: their drifts change the concept, not the inputs, so
each input alarm there is a false one.

Scoring, per stream and overall: a detection is a hit when it falls within ``[p - w/2,
p + w/2 + tolerance]`` of a change at ``p`` of width ``w`` and is the first there; every
other detection is a false alarm. Precision, recall and F1 count hits and changes;
the false-alarm rate counts the detections outside every change's window per million
of the events outside them; the delay runs from ``p`` to the hit.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_trainer.drift.monitor import DETECTORS, DriftMonitor, InputDriftMonitor

TOLERANCE = 10_000  # events after a change (after its transition, when gradual)


@dataclass
class Change:
    position: int
    width: int = 0  # 0: abrupt; else the transition's length, centred on position


@dataclass
class Case:
    name: str
    source: str
    errors: np.ndarray  # one per event
    changes: list[Change]
    features: np.ndarray | None = None  # per event, for the input monitor
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# ---- river's synthetic streams --------------------------------------------------------------


def _abrupt(make: Callable[[int], Any], positions: Sequence[int]) -> Iterator[Any]:
    """Concept 0 until positions[0], concept k from positions[k - 1] on: abrupt changes.
    (river's ConceptDriftStream overflows for narrow widths over long streams.)"""
    start = 0
    for k, end in enumerate([*positions, None]):
        yield from itertools.islice(iter(make(k)), None if end is None else end - start)
        start = end or start


def _river_case(
    name: str,
    stream: Iterable[tuple[dict, Any]],
    n: int,
    changes: list[Change],
    regression: bool,
    source: str,
    model: Any = None,
) -> Case:
    """``model`` (default: River's LogisticRegression behind a StandardScaler) learns
    prequentially; its per-event error is 0/1, or absolute for ``regression``."""
    from river import linear_model, preprocessing

    if model is None:
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    errors = np.empty(n)
    features: list[list[float]] = []
    keys: list[Any] | None = None
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(itertools.islice(stream, n)):
        if keys is None:
            keys = sorted(x)
        features.append([float(x[k]) for k in keys])
        p = model.predict_one(x)
        errors[i] = abs(y - p) if regression else float(p != y)
        model.learn_one(x, y)
    return Case(name, source, errors, changes, np.asarray(features), time.perf_counter() - t0)


def river_cases(n: int, seed: int = 0) -> Iterator[Case]:
    """SEA, STAGGER, Agrawal (abrupt), Hyperplane (gradual), FriedmanDrift (regression):
    ``n`` events each, changes at quarters (thirds for FriedmanDrift)."""
    from river import linear_model, preprocessing, tree
    from river.datasets import synth

    q = [n // 4, n // 2, 3 * n // 4]
    yield _river_case(
        "river SEA (abrupt, 10% noise)",
        _abrupt(lambda k: synth.SEA(variant=k, noise=0.1, seed=seed + k), q),
        n,
        [Change(p) for p in q],
        False,
        f"SEA variants 0→1→2→3 at {q}; StandardScaler + LogisticRegression",
    )
    yield _river_case(
        "river STAGGER (abrupt)",
        _abrupt(lambda k: synth.STAGGER(classification_function=k, seed=seed + k), q[:2]),
        n,
        [Change(p) for p in q[:2]],
        False,
        f"STAGGER functions 0→1→2 at {q[:2]}; one-hot + LogisticRegression",
        preprocessing.OneHotEncoder() | linear_model.LogisticRegression(),
    )
    fns = (0, 2, 5, 8)
    yield _river_case(
        "river Agrawal (abrupt)",
        _abrupt(lambda k: synth.Agrawal(classification_function=fns[k], seed=seed + k), q),
        n,
        [Change(p) for p in q],
        False,
        f"Agrawal functions {fns} at {q}; HoeffdingTreeClassifier (a linear model is near "
        "chance on most Agrawal functions)",
        tree.HoeffdingTreeClassifier(),
    )
    width = max(1, n // 25)
    yield _river_case(
        "river Hyperplane (gradual)",
        synth.ConceptDriftStream(
            synth.Hyperplane(seed=seed, n_features=10),
            synth.Hyperplane(seed=seed + 10, n_features=10),
            position=q[1],
            width=width,
            seed=seed,
        ),
        n,
        [Change(q[1], width)],
        False,
        f"Hyperplane(seed {seed}) → Hyperplane(seed {seed + 10}), centred at {q[1]}, width {width}",
    )
    third = (n // 3, 2 * n // 3)
    yield _river_case(
        "river FriedmanDrift (abrupt, regression)",
        synth.FriedmanDrift(drift_type="gra", position=third, seed=seed),
        n,
        [Change(p) for p in third],
        True,
        f"FriedmanDrift('gra') at {list(third)}; HoeffdingTreeRegressor (a linear model's "
        "error barely moves at these changes)",
        tree.HoeffdingTreeRegressor(),
    )


# ---- our producers' streams -----------------------------------------------------------------


def our_case(kind: str, n: int, seed: int = 0) -> Case:
    """Our pipeline (drift monitor off, so nothing reacts) on our producer's stream with
    one drift midway; its per-event prequential loss."""
    from stream_trainer.evaluation import evaluate as ev

    stream = ev.generated(kind, n, seed=seed, drift_at=n // 2)
    base = ev.pipeline_settings(kind, stream)
    spec = base.pipelines[0]
    drift = spec.drift.model_copy(update={"detector": "none", "actions": (), "input": False})
    settings = base.model_copy(update={"pipelines": (spec.model_copy(update={"drift": drift}),)})
    result, docs, _ = ev.run_ours(stream, settings)
    index = np.array(sorted(docs))
    losses = np.array([docs[i]["loss"] for i in index])
    # positions in the scored sequence (events before a window fills are not scored)
    at = int(np.searchsorted(index, n // 2))
    return Case(
        f"ours {kind}",
        stream.source,
        losses,
        [Change(at)],
        None,
        result.seconds,
    )


# ---- detectors and scoring ------------------------------------------------------------------


def adwin_default(errors: np.ndarray) -> list[int]:
    from river import drift

    d = drift.ADWIN()
    hits = []
    for i, e in enumerate(errors.tolist()):
        d.update(e)
        if d.drift_detected:
            hits.append(i)
    return hits


def fired(update: Callable[[np.ndarray], bool], values: np.ndarray, chunk: int) -> list[int]:
    """Positions at which ``update``, fed ``chunk`` rows at a time as the daemon feeds its
    monitors, fired (placed at the end of the update that fired)."""
    n = len(values)
    return [min(i + chunk, n) - 1 for i in range(0, n, chunk) if update(values[i : i + chunk])]


def ours(detector: str, errors: np.ndarray, chunk: int = 1000) -> list[int]:
    return fired(DriftMonitor(detector).update, errors, chunk)


def input_alarms(features: np.ndarray, chunk: int = 1000) -> list[int]:
    m = InputDriftMonitor()
    return fired(lambda x: m.update({"x": x}), features.astype(np.float32), chunk)


def score(hits: Sequence[int], changes: Sequence[Change], n: int, tol: int) -> dict[str, float]:
    windows = [(c.position - c.width // 2, c.position + (c.width + 1) // 2 + tol) for c in changes]
    found: dict[int, int] = {}
    false_stable = 0
    for h in hits:
        inside = [k for k, (a, b) in enumerate(windows) if a <= h <= b]
        if not inside:
            false_stable += 1
        elif inside[0] not in found:
            found[inside[0]] = h
    covered = np.zeros(n, bool)
    for a, b in windows:
        covered[max(a, 0) : min(b + 1, n)] = True
    stable = int(n - covered.sum())
    tp = len(found)
    return {
        "detections": len(hits),
        "changes": len(changes),
        "hits": tp,
        "false_alarms": len(hits) - tp,
        "false_in_stable": false_stable,
        "stable_events": stable,
        "delay": float(np.mean([found[k] - changes[k].position for k in found]))
        if found
        else math.nan,
    }


def summarise(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    tp = sum(r["hits"] for r in rows)
    det = sum(r["detections"] for r in rows)
    ch = sum(r["changes"] for r in rows)
    stable = sum(r["stable_events"] for r in rows)
    p = tp / det if det else (1.0 if not ch else 0.0)
    r = tp / ch if ch else 1.0
    delays = [r_["delay"] * r_["hits"] for r_ in rows if r_["hits"]]
    return {
        "detections": det,
        "changes": ch,
        "hits": tp,
        "precision": p,
        "recall": r,
        "f1": 2 * p * r / (p + r) if p + r else 0.0,
        "false_per_1m": sum(r_["false_in_stable"] for r_ in rows) / max(stable, 1) * 1e6,
        "stable_events": stable,
        "delay": sum(delays) / tp if tp else math.nan,
    }


SUITE_DETECTORS = ("page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w")


def run(
    events: int = 400_000,
    our_events: dict[str, int] | None = None,
    *,
    seed: int = 0,
    tolerance: int = TOLERANCE,
    detectors: Sequence[str] = SUITE_DETECTORS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole suite; ``events`` per river stream, ``our_events`` per our kind (default
    clicks 1M, ticks and sensors 300k)."""
    say = progress or (lambda msg: None)
    sizes = our_events or {"clicks": 1_000_000, "ticks": 300_000, "sensors": 300_000}
    cases: list[Case] = []
    for case in river_cases(events, seed):
        say(f"{case.name}: {case.errors.size:,} events")
        cases.append(case)
    for kind, n in sizes.items():
        if n:
            say(f"ours {kind}: {n:,} events through our pipeline")
            cases.append(our_case(kind, n, seed))
    methods: dict[str, Callable[[np.ndarray], list[int]]] = {
        "ADWIN defaults, per-event error": adwin_default,
        **{f"ours: {d}": (lambda e, d=d: ours(d, e)) for d in detectors if d in DETECTORS},
    }
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for case in cases:
        for name, detect in methods.items():
            hits = detect(case.errors)
            per[name].append(
                {"stream": case.name, **score(hits, case.changes, case.errors.size, tolerance)}
            )
        if case.features is not None:
            case.extra["input_alarms"] = len(input_alarms(case.features))
        say(f"scored {case.name}")
    return {
        "tolerance": tolerance,
        "streams": [
            {
                "name": c.name,
                "source": c.source,
                "events": int(c.errors.size),
                "changes": [[ch.position, ch.width] for ch in c.changes],
                "input_alarms": c.extra.get("input_alarms"),
            }
            for c in cases
        ],
        "methods": {
            name: {"overall": summarise(rows), "streams": rows} for name, rows in per.items()
        },
    }


def _f(v: float, digits: int = 2) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    base_row = methods["ADWIN defaults, per-event error"]["overall"]
    base = base_row["f1"]
    lines = [
        f"Tolerance: a detection within {report['tolerance']:,} events after a change (after "
        "its transition, when gradual) is a hit; the first one only. Stable events (outside "
        f"every change's window): {base_row['stable_events']:,}.",
        "",
        "| detector | detections | hits / changes | precision | recall | F1 | F1 vs ADWIN "
        "defaults | false alarms per 1M stable events | mean delay (events) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in methods.items():
        o = m["overall"]
        vs = f"{o['f1'] / base:.1f}×" if base else ("∞" if o["f1"] else "–")
        lines.append(
            f"| {name} | {o['detections']} | {o['hits']} / {o['changes']} | {_f(o['precision'])} "
            f"| {_f(o['recall'])} | {_f(o['f1'])} | {vs} | {_f(o['false_per_1m'], 1)} "
            f"| {_f(o['delay'], 0)} |"
        )
    lines += [
        "",
        "Per stream (detections / hits of changes / mean delay):",
        "",
        "| stream | events | changes | input alarms | "
        + " | ".join(n.replace(", per-event error", "") for n in methods)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(methods),
    ]
    for k, s in enumerate(report["streams"]):
        cells = []
        for m in methods.values():
            r = m["streams"][k]
            cells.append(f"{r['detections']} / {r['hits']} / {_f(r['delay'], 0)}")
        ia = s["input_alarms"]
        lines.append(
            f"| {s['name']} | {s['events']:,} | {len(s['changes'])} | "
            f"{'–' if ia is None else ia} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    lines += [f"- {s['name']}: {s['source']}" for s in report["streams"]]
    return "\n".join(lines)
