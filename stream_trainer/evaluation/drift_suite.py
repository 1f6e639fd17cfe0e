"""`stream-trainer evaluate --study drift-suite`: drift detectors scored on streams whose
change points are known (:mod:`.drift_cases`).

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

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stream_trainer.drift.monitor import DETECTORS, DriftMonitor, InputDriftMonitor
from stream_trainer.evaluation.drift_cases import RIVER, Case, Change, our_case, river_cases

TOLERANCE = 10_000  # events after a change (after its transition, when gradual)
SUITE_DETECTORS = ("page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w")
BASELINE = "ADWIN defaults, per-event error"
STREAMS = (*RIVER, "clicks", "ticks", "sensors")


# ---- detectors ------------------------------------------------------------------------------
def adwin_default(errors: np.ndarray) -> list[int]:
    """River's ADWIN at its defaults, fed one per-event error at a time."""
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
    """Our drift monitor with ``detector``, as the daemon runs it."""
    return fired(DriftMonitor(detector).update, errors, chunk)


def input_alarms(features: np.ndarray, chunk: int = 1000) -> list[int]:
    """Our input monitor's alarms on the features."""
    m = InputDriftMonitor()
    return fired(lambda x: m.update({"x": x}), features.astype(np.float32), chunk)


# ---- scoring --------------------------------------------------------------------------------
def score(hits: Sequence[int], changes: Sequence[Change], n: int, tol: int) -> dict[str, float]:
    """Hits, false alarms (all; in stable stretches) and delay of one detector on one stream."""
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
    """One detector over all streams: precision, recall, F1, false alarms per 1M, delay."""
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


# ---- the suite ------------------------------------------------------------------------------
def _cases(
    events: int,
    sizes: dict[str, int],
    seed: int,
    say: Callable[[str], None],
    only: Sequence[str] | None = None,
    cache: Path | None = None,
) -> list[Case]:
    """River's streams of ``events`` each, then ours of ``sizes`` (those not 0); ``only``
    the streams named (keys of ``RIVER`` and our kinds); with ``cache``, each stream's
    learner errors are read from there when present, else made and saved there."""
    wanted = [(k, events) for k in RIVER] + [(k, n) for k, n in sizes.items() if n]
    cases: list[Case] = []
    for key, n in wanted:
        if only is not None and key not in only:
            continue
        path = cache / f"{key}-seed{seed}-{n}.npz" if cache else None
        if path is not None and path.exists():
            case = _load(path)
        elif key in RIVER:
            case = next(river_cases(n, seed, [key]))
        else:
            say(f"ours {key}: {n:,} events through our pipeline")
            case = our_case(key, n, seed)
        if path is not None and not path.exists():
            _save(case, path)
        say(f"{case.name}: {case.errors.size:,} events")
        cases.append(case)
    return cases


def _save(case: Case, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        errors=case.errors,
        changes=np.array([[c.position, c.width] for c in case.changes]),
        features=case.features if case.features is not None else np.zeros((0, 0)),
        meta=np.array([case.name, case.source]),
    )


def _load(path: Path) -> Case:
    with np.load(path) as d:
        name, source = (str(x) for x in d["meta"])
        features = d["features"] if d["features"].size else None
        changes = [Change(int(p), int(w)) for p, w in d["changes"]]
        return Case(name, source, d["errors"], changes, features)


def run(
    events: int = 400_000,
    our_events: dict[str, int] | None = None,
    *,
    seed: int = 0,
    tolerance: int = TOLERANCE,
    detectors: Sequence[str] = SUITE_DETECTORS,
    progress: Callable[[str], None] | None = None,
    streams: Sequence[str] | None = None,
    cache: Path | None = None,
) -> dict[str, Any]:
    """The whole suite; ``events`` per river stream, ``our_events`` per our kind (default
    clicks 1M, ticks and sensors 300k); ``streams``: only these (see :data:`STREAMS`);
    ``cache``: a folder for the learners' per-event errors (they depend on the learners'
    code, not the detectors': clear it when a learner changes)."""
    say = progress or (lambda msg: None)
    sizes = our_events or {"clicks": 1_000_000, "ticks": 300_000, "sensors": 300_000}
    unknown = set(streams or ()) - set(STREAMS)
    if unknown:
        raise ValueError(f"unknown drift-suite streams {sorted(unknown)}; of {list(STREAMS)}")
    cases = _cases(events, sizes, seed, say, streams, cache)
    methods: dict[str, Callable[[np.ndarray], list[int]]] = {
        BASELINE: adwin_default,
        **{f"ours: {d}": partial(ours, d) for d in detectors if d in DETECTORS},
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


# ---- the report's tables --------------------------------------------------------------------
def _f(v: float, digits: int = 2) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:,.{digits}f}"


def drift_suite_markdown(report: dict[str, Any]) -> str:
    """The drift suite's tables: detectors overall, then per stream, then the sources."""
    methods = report["methods"]
    base_row = methods[BASELINE]["overall"]
    lines = [
        f"Tolerance: a detection within {report['tolerance']:,} events after a change (after "
        "its transition, when gradual) is a hit; the first one only. Stable events (outside "
        f"every change's window): {base_row['stable_events']:,}.",
        "",
        *_detector_table(methods, base_row["f1"]),
        "",
        "Per stream (detections / hits of changes / mean delay):",
        "",
        *_stream_table(methods, report["streams"]),
        "",
        *[f"- {s['name']}: {s['source']}" for s in report["streams"]],
    ]
    return "\n".join(lines)


def _detector_table(methods: dict[str, Any], base: float) -> list[str]:
    lines = [
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
    return lines


def _stream_table(methods: dict[str, Any], streams: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| stream | events | changes | input alarms | "
        + " | ".join(n.replace(", per-event error", "") for n in methods)
        + " |",
        "|---|---:|---:|---:|" + "---:|" * len(methods),
    ]
    for k, s in enumerate(streams):
        cells = []
        for m in methods.values():
            r = m["streams"][k]
            cells.append(f"{r['detections']} / {r['hits']} / {_f(r['delay'], 0)}")
        ia = s["input_alarms"]
        lines.append(
            f"| {s['name']} | {s['events']:,} | {len(s['changes'])} | "
            f"{'–' if ia is None else ia} | " + " | ".join(cells) + " |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m stream_trainer.evaluation.drift_suite --streams sea,ticks --seed 1``:
    some of the suite's streams, to iterate on a detector without the whole run
    (``stream-trainer evaluate --study drift-suite`` runs them all)."""
    import argparse
    import json
    import sys

    p = argparse.ArgumentParser(prog="python -m stream_trainer.evaluation.drift_suite")
    p.add_argument("--streams", default=",".join(STREAMS), help=f"of {','.join(STREAMS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--events", type=int, default=400_000, help="per river stream")
    p.add_argument("--detectors", default=",".join(SUITE_DETECTORS))
    p.add_argument("--cache", type=Path, help="keep the learners' errors here, reuse them")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    n = a.events
    report = run(
        n,
        {"clicks": n * 5 // 2, "ticks": n * 3 // 4, "sensors": n * 3 // 4},
        seed=a.seed,
        detectors=a.detectors.split(","),
        streams=a.streams.split(","),
        progress=lambda msg: print(msg, file=sys.stderr),
        cache=a.cache,
    )
    print(json.dumps(report, indent=1) if a.json else drift_suite_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
