"""`stream-trainer evaluate`: our pipeline and the baselines on one stream, side by side.

Offline, no broker. Our side is the daemon's own code: the stream's messages go as
records through ``Pipeline.handle`` (decode, validate, dedup, batch, featurize, the
prequential step, drift monitor and policy), and each example's prediction comes back
through the same output path the daemon publishes. The baselines see the same decoded
events, in the same order, test-then-train one event at a time:

- clicks: constant rate (running mean), River ``LogisticRegression`` (one-hot ids,
  context tokens and the user x item cross), River ``HoeffdingAdaptiveTreeClassifier``
  (ids as nominal features), Vowpal Wabbit ``--loss_function logistic -q ui`` (when
  the ``vowpalwabbit`` package is installed: ``pip install -e '.[bench]'``);
- ticks and sensors: zero change / last value, and River ``LinearRegression`` and
  ``HoeffdingAdaptiveTreeRegressor`` on the features our featurizer builds (the
  normalised window and the key), mapped back to raw units the same way.

Every method is scored on the same events: those our featurizer makes an example of
(ticks and sensors skip each key's first readings).
"""

from __future__ import annotations

import gc
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_trainer.config import PipelineSettings, Settings, parse_settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.events import Rejected
from stream_trainer.features.base import FeatureBatch
from stream_trainer.learner.quality import Quality, profile_for
from stream_trainer.models.registry import build_featurizer
from stream_trainer.pipeline.ports import Record
from stream_trainer.producers.generators import make_generator
from stream_trainer.producers.publish import read_jsonl

POLL = 2000  # records handed to the pipeline at a time, as a consumer poll would
EPS = 1e-15


@dataclass
class Result:
    name: str
    metrics: dict[str, float]
    seconds: float
    events: int
    note: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.nan


@dataclass
class Stream:
    """Raw messages and the decoded events (``None`` where the decoder refused one)."""

    kind: str
    raw: list[bytes]
    events: list[dict[str, Any] | None]
    source: str
    drift_at: list[int] = field(default_factory=list)


# ---- the stream ---------------------------------------------------------------------------
def generated(kind: str, count: int, seed: int = 0, drift_at: int | None = None) -> Stream:
    evs = list(make_generator(kind, seed=seed, count=count, drift_at=drift_at))
    raw = [json.dumps(e, separators=(",", ":")).encode() for e in evs]
    src = f"make_generator({kind!r}, seed={seed}, count={count}, drift_at={drift_at})"
    return _decoded(kind, raw, src, [drift_at] if drift_at else [])


def recurring_clicks(count: int, seed: int = 0) -> Stream:
    """Clicks whose concept goes A -> B -> A, a third of the stream each."""
    every = count // 3
    evs = list(make_generator("clicks", seed=seed, count=count, drift_every=every, recurring=True))
    raw = [json.dumps(e, separators=(",", ":")).encode() for e in evs]
    src = (
        f"make_generator('clicks', seed={seed}, count={count}, drift_every={every}, recurring=True)"
    )
    return _decoded("clicks", raw, src, [every, 2 * every])


def from_file(kind: str, path: str | Path, limit: int | None = None) -> Stream:
    raw = []
    for line in read_jsonl(path):
        raw.append(line)
        if limit is not None and len(raw) >= limit:
            break
    return _decoded(kind, raw, str(path), [])


def _decoded(kind: str, raw: list[bytes], source: str, drift_at: list[int]) -> Stream:
    from stream_trainer.events import decoder_for

    channels = _channels(kind, raw)
    decode = decoder_for(kind, channels=channels)
    events = [None if isinstance(d := decode(r), Rejected) else d for r in raw]
    return Stream(kind, raw, events, source, drift_at)


def _channels(kind: str, raw: Sequence[bytes]) -> tuple[str, ...]:
    """Sensor channels: the first valid reading's, as the daemon's config would fix them."""
    if kind != "sensors":
        return ()
    for r in raw[:100]:
        try:
            values = json.loads(r).get("values")
        except (ValueError, AttributeError):
            continue
        if isinstance(values, dict) and values:
            return tuple(sorted(values))
    return ()


# ---- ours ---------------------------------------------------------------------------------
class _Capture:
    """A Sink that keeps the output records in memory (what the daemon would publish)."""

    def __init__(self) -> None:
        self.docs: dict[int, dict[str, Any]] = {}

    def output(self, topic: str, key: str | None, doc: dict[str, Any]) -> None:
        self.docs[doc["offset"]] = doc

    def dead_letter(self, topic: str, record: Record, why: Rejected) -> None:
        pass

    def flush(self, timeout_s: float = 0.0) -> None:
        pass


def pipeline_settings(kind: str, stream: Stream, config: str | None = None) -> Settings:
    """The pipeline to evaluate: the named config's first pipeline of this kind, or the
    defaults of the kind (batch 256, the daemon's default optimizer)."""
    if config:
        from stream_trainer.config import load_settings

        loaded = load_settings(config)
        specs = [p for p in loaded.pipelines if p.kind == kind]
        if not specs:
            raise StreamTrainerError(f"{config} has no pipeline of kind {kind!r}")
        doc = loaded.model_dump(mode="json")
        doc["pipelines"] = [specs[0].model_dump(mode="json")]
    else:
        p: dict[str, Any] = {"name": kind, "kind": kind, "topics": ["evaluate"]}
        if kind == "sensors":
            p["featurizer"] = {"channels": list(_channels(kind, stream.raw))}
        doc = {"pipelines": [p]}
    doc["pipelines"][0]["output_topic"] = "evaluate.out"
    doc["device"] = "cpu"
    return parse_settings(doc, "evaluate")


def run_ours(stream: Stream, settings: Settings) -> tuple[Result, dict[int, dict], Any]:
    import torch

    from stream_trainer.pipeline.core import Pipeline

    spec: PipelineSettings = settings.pipelines[0]
    torch.set_num_threads(settings.torch_threads)  # as the daemon does
    with tempfile.TemporaryDirectory(prefix="evaluate-") as work:
        settings = settings.model_copy(
            update={"checkpoint": settings.checkpoint.model_copy(update={"dir": Path(work)})}
        )
        frozen = [0.0]  # batches leave at max_size only: the same batches every run
        p = Pipeline(settings, spec, clock=lambda: frozen[0])
        sink = _Capture()
        p.sink = sink
        records = [Record("evaluate", 0, i, 0, None, r) for i, r in enumerate(stream.raw)]
        t0 = time.perf_counter()
        for i in range(0, len(records), POLL):
            p.handle(records[i : i + POLL])
            p.pump()
        p.flush()
        seconds = time.perf_counter() - t0
    name = f"ours ({spec.kind} model, batch {spec.batch.max_size})"
    return Result(name, {}, seconds, len(records)), sink.docs, p


# ---- baselines ----------------------------------------------------------------------------
Predict = Callable[[int, dict[str, Any]], Any]


def _quiet(msg: str) -> None:
    pass


def _prequential(
    events: Sequence[dict[str, Any] | None], step: Callable[[dict[str, Any]], Any]
) -> tuple[dict[int, Any], float]:
    """Run ``step`` (predict, then learn) over the valid events; {index: prediction}."""
    out: dict[int, Any] = {}
    t0 = time.perf_counter()
    for i, ev in enumerate(events):
        if ev is not None:
            out[i] = step(ev)
    return out, time.perf_counter() - t0


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


def click_baselines(
    stream: Stream, vw: bool = True, trees: bool = True, say: Callable[[str], None] = _quiet
) -> list[tuple[str, dict[int, Any], float]]:
    from river import linear_model, tree

    out = []
    seen = [0, 0]

    def constant(ev: dict[str, Any]) -> float:
        p = (seen[1] + 1) / (seen[0] + 2)
        seen[0] += 1
        seen[1] += int(ev["label"])
        return p

    name = "constant rate (running mean)"
    say(name)
    out.append((name, *_prequential(stream.events, constant)))

    lr = linear_model.LogisticRegression()

    def river_lr(ev: dict[str, Any]) -> float:
        x = click_tokens(ev)
        p = lr.predict_proba_one(x).get(True, 0.5)
        lr.learn_one(x, bool(ev["label"]))
        return p

    name = "River LogisticRegression (one-hot + user x item)"
    say(name)
    out.append((name, *_prequential(stream.events, river_lr)))

    hat = tree.HoeffdingAdaptiveTreeClassifier(seed=0)

    def river_tree(ev: dict[str, Any]) -> float:
        x = {"user": ev["user_id"], "item": ev["item_id"], **{
            k: v for k, v in ev.get("context", {}).items()}}  # fmt: skip
        p = hat.predict_proba_one(x).get(True, 0.5)
        hat.learn_one(x, bool(ev["label"]))
        return p

    if trees:
        name = "River HoeffdingAdaptiveTreeClassifier"
        say(name)
        out.append((name, *_prequential(stream.events, river_tree)))

    if vw:
        try:
            from vowpalwabbit import Workspace
        except ImportError:
            return out
        ws = Workspace("--loss_function logistic -q ui --quiet")

        def vw_step(ev: dict[str, Any]) -> float:
            ex = ws.parse(vw_line(ev))
            ws.learn(ex)
            raw = ex.get_simplelabel_prediction()
            ws.finish_example(ex)
            return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, raw))))

        name = "Vowpal Wabbit --loss_function logistic -q ui"
        say(name)
        out.append((name, *_prequential(stream.events, vw_step)))
        ws.finish()
    return out


def _feature_rows(fb: FeatureBatch) -> Iterable[tuple[int, dict[str, float], np.ndarray, Any]]:
    """(event index, River features, normalised target, (scale, shift)) per example."""
    win = fb.inputs["window"].reshape(len(fb), -1)
    key_name = "symbol" if "symbol" in fb.inputs else "sensor"
    for j, idx in enumerate(fb.index.tolist()):
        x = {f"w{k}": float(v) for k, v in enumerate(win[j])}
        x[f"key={fb.inputs[key_name][j]}"] = 1.0
        yield idx, x, np.atleast_1d(fb.targets[j]), (fb.scale[j], fb.shift[j])


def series_baselines(
    stream: Stream,
    featurizer_spec: Any,
    trees: bool = True,
    say: Callable[[str], None] = _quiet,
) -> list[tuple[str, dict, float]]:
    """Zero change, last value, and River regressors on our featurizer's features."""
    from river import linear_model, tree

    kind = stream.kind
    key = "symbol" if kind == "ticks" else "sensor_id"
    featurizer = build_featurizer(kind, featurizer_spec)
    valid = [(i, ev) for i, ev in enumerate(stream.events) if ev is not None]
    rows: list[tuple[int, dict[str, float], np.ndarray, Any]] = []
    t_feat = time.perf_counter()
    for k in range(0, len(valid), 256):
        chunk = valid[k : k + 256]
        fb = featurizer.featurize([ev for _, ev in chunk])
        rows += [(chunk[j][0], x, y, s) for j, x, y, s in _feature_rows(fb)]
    t_feat = time.perf_counter() - t_feat
    out: list[tuple[str, dict, float]] = []

    # trivial: ticks predict a zero return / the last return; sensors the last reading
    last: dict[str, Any] = {}
    prev_price: dict[str, float] = {}
    zero, persist = {}, {}
    t0 = time.perf_counter()
    for i, ev in valid:
        k = ev[key]
        if kind == "ticks":
            p = prev_price.get(k)
            r = math.log(ev["price"] / p) if p else None
            zero[i] = 0.0
            persist[i] = last.get(k, 0.0)
            prev_price[k] = ev["price"]
            if r is not None:
                last[k] = r
        else:
            x = np.array([ev["values"][c] for c in featurizer.channels])
            persist[i] = last.get(k, x)
            last[k] = x
    dt = time.perf_counter() - t0
    if kind == "ticks":
        out.append(("zero return (random walk)", zero, dt))
        out.append(("last return (persistence)", persist, dt))
    else:
        out.append(("last value (persistence)", persist, dt))

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
            preds[i] = float(raw[0]) if kind == "ticks" else raw
        out.append((f"{name} (our features)", preds, time.perf_counter() - t0 + t_feat))
    return out


# ---- scoring ------------------------------------------------------------------------------
def profile_of(kind: str) -> str:
    return profile_for(kind, "binary" if kind == "clicks" else "regression")


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


def evaluate(
    stream: Stream,
    *,
    config: str | None = None,
    vw: bool = True,
    trees: bool = True,
    progress: Any = None,
) -> dict[str, Any]:
    """Run ours and the baselines; ``trees``: River's Hoeffding adaptive trees too (the
    slowest baselines by far: ~5k clicks/s, a few hundred sensor readings/s here)."""
    say = progress or _quiet
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
    if stream.kind == "sensors":
        flags = [bool(docs[i].get("anomaly")) for i in index]
        ours.metrics["anomaly_rate"] = float(np.mean(flags)) if flags else math.nan
    if stream.kind == "clicks":
        baselines = click_baselines(stream, vw=vw, trees=trees, say=say)
    else:
        baselines = series_baselines(stream, spec.featurizer, trees=trees, say=say)
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


PRIMARY = {"binary": "log_loss", "direction": "mse", "regression": "mse"}


def markdown(report: dict[str, Any]) -> str:
    rows = report["results"]
    metrics = [k for k in rows[0] if k not in ("name", "events_per_s")]
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
    return "\n".join(lines)


def _fmt(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "n/a"
    a = abs(v)
    return f"{v:.3e}" if (a and (a < 1e-3 or a >= 1e5)) else f"{v:.4f}"


# ---- adaptation on drift ----------------------------------------------------------------
ADAPTATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "reset_optimizer + boost_lr": ("reset_optimizer", "boost_lr"),
    "reset_model": ("reset_model",),
    "challenger": ("challenger",),
}
RECOVERY_WINDOW = 2000  # events in the rolling loss
RECOVERY_TOLERANCE = 0.05  # within 5% of the pre-drift loss


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


def adaptation(stream: Stream, config: str | None = None, progress: Any = None) -> dict[str, Any]:
    """Our pipeline once per adaptation policy on a stream with one known drift."""
    if not stream.drift_at:
        raise StreamTrainerError("the adaptation comparison needs a stream with --drift-at")
    drift_at = stream.drift_at[0]
    say = progress or (lambda msg: None)
    base = pipeline_settings(stream.kind, stream, config)
    rows = []
    for name, actions in ADAPTATIONS.items():
        say(f"adaptation: {name}")
        spec = base.pipelines[0]
        drift = spec.drift.model_copy(update={"actions": actions})
        settings = base.model_copy(
            update={"pipelines": (spec.model_copy(update={"drift": drift}),)}
        )
        result, docs, pipeline = run_ours(stream, settings)
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


def adaptation_markdown(report: dict[str, Any]) -> str:
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


# ---- replay on a recurring concept ----------------------------------------------------------
RETURN_WINDOW = 10_000  # events after the return to A that are compared


def replay_study(
    stream: Stream,
    capacities: Sequence[int] = (0, 20_000),
    fraction: float = 0.5,
    config: str | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Our pipeline with and without a replay buffer on an A -> B -> A stream: the loss
    when A comes back (first ``RETURN_WINDOW`` events, and the whole last third)."""
    if len(stream.drift_at) < 2:
        raise StreamTrainerError("the replay study needs a stream that returns to its concept")
    back = stream.drift_at[1]
    say = progress or (lambda msg: None)
    base = pipeline_settings(stream.kind, stream, config)
    rows = []
    for capacity in capacities:
        say(f"replay capacity {capacity}")
        spec = base.pipelines[0]
        replay = spec.replay.model_copy(update={"capacity": capacity, "fraction": fraction})
        settings = base.model_copy(
            update={"pipelines": (spec.model_copy(update={"replay": replay}),)}
        )
        result, docs, _ = run_ours(stream, settings)
        index = np.array(sorted(docs))
        losses = np.array([docs[i]["loss"] for i in index])
        a1 = losses[index < stream.drift_at[0]]
        a2 = losses[index >= back]
        rows.append(
            {
                "replay": f"{capacity:,} examples, {fraction} per new one" if capacity else "off",
                "loss_first_a": float(a1.mean()),
                "loss_b": float(losses[(index >= stream.drift_at[0]) & (index < back)].mean()),
                "loss_return_window": float(a2[:RETURN_WINDOW].mean()),
                "loss_second_a": float(a2.mean()),
                "events_per_s": result.events_per_s,
            }
        )
    return {"source": stream.source, "back_at": back, "rows": rows}


def replay_markdown(report: dict[str, Any]) -> str:
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
