"""The baselines our pipeline is compared with, test-then-train one event at a time on
the same decoded events in the same order:

- clicks: constant rate (running mean), River ``LogisticRegression`` (one-hot ids,
  context tokens and the user x item cross), River ``HoeffdingAdaptiveTreeClassifier``
  (ids as nominal features), Vowpal Wabbit ``--loss_function logistic -q ui`` (when
  the ``vowpalwabbit`` package is installed: ``pip install -e '.[bench]'``);
- ticks and sensors: zero change / last value, and River ``LinearRegression`` and
  ``HoeffdingAdaptiveTreeRegressor`` on the features our featurizer builds (the
  normalised window and the key), mapped back to raw units the same way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from stream_trainer.evaluation.kinds import EvalKind, traits
from stream_trainer.evaluation.streams import Stream
from stream_trainer.features.base import FeatureBatch
from stream_trainer.models.registry import build_featurizer

TRIVIAL_NAMES = frozenset(
    {
        "constant rate (running mean)",
        "zero return (random walk)",
        "last return (persistence)",
        "last value (persistence)",
    }
)  # the bar every stream holds us to (the rest are River's and Vowpal Wabbit's learners)

Step = Callable[[dict[str, Any]], Any]  # predict one event, then learn it
Scored = tuple[str, dict[int, Any], float]  # name, {event index: prediction}, seconds
Row = tuple[int, dict[str, float], np.ndarray, Any]  # index, features, target, (scale, shift)
Valid = list[tuple[int, dict[str, Any]]]  # the decoded events, by index


def _quiet(msg: str) -> None:
    pass


def run_baselines(
    stream: Stream,
    featurizer_spec: Any,
    *,
    vw: bool = True,
    trees: bool = True,
    say: Callable[[str], None] = _quiet,
) -> list[Scored]:
    """The baselines of the stream's kind, each with its predictions and time."""
    if traits(stream.kind).baselines == "clicks":
        return click_baselines(stream, vw=vw, trees=trees, say=say)
    return series_baselines(stream, featurizer_spec, trees=trees, say=say)


def _prequential(
    events: Sequence[dict[str, Any] | None], step: Step
) -> tuple[dict[int, Any], float]:
    """Run ``step`` (predict, then learn) over the valid events; {index: prediction}."""
    out: dict[int, Any] = {}
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        if ev is not None:
            out[i] = step(ev)
    return out, time.perf_counter() - t0


# ---- clicks -------------------------------------------------------------------------------
def click_tokens(ev: dict[str, Any]) -> dict[str, float]:
    """One-hot ids, context tokens and the user x item cross (River's click features)."""
    x = {f"u={ev['user_id']}": 1.0, f"i={ev['item_id']}": 1.0}
    x[f"ui={ev['user_id']}|{ev['item_id']}"] = 1.0
    for k, v in ev.get("context", {}).items():
        if isinstance(v, float):
            x[k] = max(-10.0, min(10.0, v))
        else:
            x[f"{k}={v}"] = 1.0
    return x


def vw_line(ev: dict[str, Any]) -> str:
    """A click event in Vowpal Wabbit's text format: namespaces u, i (crossed by -q ui), c."""
    ctx = " ".join(f"{k}={v}" for k, v in sorted(ev.get("context", {}).items()))
    return f"{1 if ev['label'] else -1} |u {ev['user_id']} |i {ev['item_id']} |c {ctx}"


def _constant_rate() -> Step:
    seen = [0, 0]

    def step(ev: dict[str, Any]) -> float:
        p = (seen[1] + 1) / (seen[0] + 2)
        seen[0] += 1
        seen[1] += int(ev["label"])
        return p

    return step


def _river_logistic() -> Step:
    from river import linear_model

    lr = linear_model.LogisticRegression()

    def step(ev: dict[str, Any]) -> float:
        x = click_tokens(ev)
        p = lr.predict_proba_one(x).get(True, 0.5)
        lr.learn_one(x, bool(ev["label"]))
        return p

    return step


def _river_tree() -> Step:
    from river import tree

    hat = tree.HoeffdingAdaptiveTreeClassifier(seed=0)

    def step(ev: dict[str, Any]) -> float:
        x = {"user": ev["user_id"], "item": ev["item_id"], **{
            k: v for k, v in ev.get("context", {}).items()}}  # fmt: skip
        p = hat.predict_proba_one(x).get(True, 0.5)
        hat.learn_one(x, bool(ev["label"]))
        return p

    return step


def _vowpal_wabbit() -> tuple[Step, Callable[[], None]] | None:
    """VW's step and its finish, or ``None`` when the package is not installed."""
    try:
        from vowpalwabbit import Workspace
    except ImportError:
        return None
    ws = Workspace("--loss_function logistic -q ui --quiet")

    def step(ev: dict[str, Any]) -> float:
        ex = ws.parse(vw_line(ev))
        ws.learn(ex)
        raw = ex.get_simplelabel_prediction()
        ws.finish_example(ex)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, raw))))

    return step, ws.finish


def click_baselines(
    stream: Stream, vw: bool = True, trees: bool = True, say: Callable[[str], None] = _quiet
) -> list[Scored]:
    """Constant rate, River's logistic regression and tree, and VW, on the click events."""
    steps = [
        ("constant rate (running mean)", _constant_rate),
        ("River LogisticRegression (one-hot + user x item)", _river_logistic),
    ]
    if trees:
        steps.append(("River HoeffdingAdaptiveTreeClassifier", _river_tree))
    out: list[Scored] = []
    for name, make in steps:
        step = make()
        say(name)
        out.append((name, *_prequential(stream.events, step)))
    if vw and (made := _vowpal_wabbit()) is not None:
        step, finish = made
        name = "Vowpal Wabbit --loss_function logistic -q ui"
        say(name)
        out.append((name, *_prequential(stream.events, step)))
        finish()
    return out


# ---- ticks and sensors ----------------------------------------------------------------------
def _feature_rows(fb: FeatureBatch, feature_key: str) -> Iterable[Row]:
    """(event index, River features, normalised target, (scale, shift)) per example."""
    win = fb.inputs["window"].reshape(len(fb), -1)
    assert fb.scale is not None and fb.shift is not None  # a series featurizer's
    for j, idx in enumerate(fb.index.tolist()):
        x = {f"w{k}": float(v) for k, v in enumerate(win[j])}
        x[f"key={fb.inputs[feature_key][j]}"] = 1.0
        yield idx, x, np.atleast_1d(fb.targets[j]), (fb.scale[j], fb.shift[j])


def _examples(valid: Valid, featurizer: Any, feature_key: str) -> tuple[list[Row], float]:
    """Our featurizer's examples of the valid events, 256 at a time, and the time taken."""
    rows: list[Row] = []
    t0 = time.perf_counter()
    for k in range(0, len(valid), 256):
        chunk = valid[k : k + 256]
        fb = featurizer.featurize([ev for _, ev in chunk])
        rows += [(chunk[j][0], x, y, s) for j, x, y, s in _feature_rows(fb, feature_key)]
    return rows, time.perf_counter() - t0


def _return_baselines(valid: Valid, kind: EvalKind, featurizer: Any) -> list[Scored]:
    """A price series: predict a zero return, or the key's last return."""
    last: dict[str, Any] = {}
    prev_price: dict[str, float] = {}
    zero, persist = {}, {}
    assert kind.key_field is not None  # a series kind's (EVAL_KINDS)
    t0 = time.perf_counter()
    for i, ev in valid:
        k = ev[kind.key_field]
        p = prev_price.get(k)
        r = math.log(ev["price"] / p) if p else None
        zero[i] = 0.0
        persist[i] = last.get(k, 0.0)
        prev_price[k] = ev["price"]
        if r is not None:
            last[k] = r
    dt = time.perf_counter() - t0
    return [("zero return (random walk)", zero, dt), ("last return (persistence)", persist, dt)]


def _last_value_baselines(valid: Valid, kind: EvalKind, featurizer: Any) -> list[Scored]:
    """Readings per channel: predict the key's last reading."""
    last: dict[str, Any] = {}
    persist = {}
    assert kind.key_field is not None  # a series kind's (EVAL_KINDS)
    t0 = time.perf_counter()
    for i, ev in valid:
        k = ev[kind.key_field]
        x = np.array([ev["values"][c] for c in featurizer.channels])
        persist[i] = last.get(k, x)
        last[k] = x
    return [("last value (persistence)", persist, time.perf_counter() - t0)]


TRIVIAL: dict[str, Callable[[Valid, EvalKind, Any], list[Scored]]] = {
    "returns": _return_baselines,
    "last_value": _last_value_baselines,
}


def _river_regressors(
    rows: list[Row], kind: EvalKind, trees: bool, say: Callable[[str], None]
) -> Iterable[tuple[str, dict[int, Any], float]]:
    """River regressors, one per target column, on our features; predictions in raw units."""
    from river import linear_model, tree

    n_out = rows[0][2].size if rows else 1
    regressors: list[tuple[str, Callable[[], Any]]] = [
        ("River LinearRegression", linear_model.LinearRegression)
    ]
    if trees:
        regressors.append(
            (
                "River HoeffdingAdaptiveTreeRegressor",
                lambda: tree.HoeffdingAdaptiveTreeRegressor(seed=0),
            )  # fmt: skip
        )
    for name, make in regressors:
        say(name)
        models = [make() for _ in range(n_out)]
        preds: dict[int, Any] = {}
        t0 = time.perf_counter()
        for i, x, y, (scale, shift) in rows:
            p = np.array([m.predict_one(x) for m in models], np.float64)
            for m, target in zip(models, y, strict=True):
                m.learn_one(x, float(target))
            raw = p * scale + shift
            preds[i] = float(raw[0]) if kind.scalar else raw
        yield name, preds, time.perf_counter() - t0


def series_baselines(
    stream: Stream,
    featurizer_spec: Any,
    trees: bool = True,
    say: Callable[[str], None] = _quiet,
) -> list[Scored]:
    """Zero change, last value, and River regressors on our featurizer's features."""
    kind = traits(stream.kind)
    assert kind.trivial is not None and kind.feature_key is not None  # a series kind's
    featurizer = build_featurizer(stream.kind, featurizer_spec)
    valid = [(i, ev) for i, ev in enumerate(stream.events) if ev is not None]
    rows, t_feat = _examples(valid, featurizer, kind.feature_key)
    out = TRIVIAL[kind.trivial](valid, kind, featurizer)
    for name, preds, seconds in _river_regressors(rows, kind, trees, say):
        out.append((f"{name} (our features)", preds, seconds + t_feat))
    return out
