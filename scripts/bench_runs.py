"""`make bench`'s measurements made in its own process (scripts/bench.py runs them): the
click stream and its topics, the client limit (kafka-python alone), the trainers people
use today (Vowpal Wabbit, River), our trainer core on pre-built batches, where the
daemon's time goes (a stage profile) and whether a training thread overlaps ingest.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stream_trainer.config import KafkaSettings, parse_settings
from stream_trainer.edges.admin import create_topics
from stream_trainer.edges.consumer import consumer_config
from stream_trainer.evaluation.baselines import click_tokens, vw_line
from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.learner import Learner
from stream_trainer.models.clicks import build as build_click_model
from stream_trainer.producers.generators import KEY_FIELD, make_generator
from stream_trainer.producers.publish import publish

SEED = 7
PARTITIONS = 2
EPS = 1e-15


# ---- the stream ----------------------------------------------------------------------------
def encode(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def click_events(n: int) -> list[dict[str, Any]]:
    return list(make_generator("clicks", seed=SEED, count=n, drift_at=n // 2))


def fill_topic(bootstrap: str, kind: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    create_topics(bootstrap, {topic: PARTITIONS})
    key = KEY_FIELD.get(kind)
    if key is None:  # (tabular: no key; chunks go to the partitions in turn)
        values = (encode(ev) for ev in events)
        publish(bootstrap, topic, values, total=len(events), progress=False, linger_ms=50)
        return
    pairs = ((str(ev[key]).encode(), encode(ev)) for ev in events)
    publish(bootstrap, topic, pairs, total=len(events), progress=False, linger_ms=50)


# the click stream as Avro with Confluent's framing (the ``clicks-avro`` rows): the clicks
# kind's own fields, the context a map of strings and numbers
CLICK_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Click",
    "fields": [
        {"name": "ts", "type": "double"},
        {"name": "user_id", "type": "string"},
        {"name": "item_id", "type": "string"},
        {"name": "context", "type": {"type": "map", "values": ["string", "long", "double"]}},
        {"name": "label", "type": "int"},
    ],
}
AVRO_SCHEMA_ID = 1


def fill_avro_topic(bootstrap: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    from stream_trainer.events.avro import encode as avro

    create_topics(bootstrap, {topic: PARTITIONS})
    pairs = ((str(ev["user_id"]).encode(), avro(ev, CLICK_SCHEMA, AVRO_SCHEMA_ID)) for ev in events)
    publish(bootstrap, topic, pairs, total=len(events), progress=False, linger_ms=50)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---- the client limit ---------------------------------------------------------------------
def client_rate(
    bootstrap: str, topic: str, n: int, decode: bool, group: str, avro: bool = False
) -> float:
    """kafka-python alone, configured as the daemon's consumer: events/s from the first
    non-empty poll to the n-th record (with ``decode``: ``json.loads`` of every value; with
    ``avro`` too: fastavro's read of every value past its Confluent header instead)."""
    from kafka import KafkaConsumer

    settings = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(topic, **consumer_config(settings, group, "bench"))
    seen, t0 = 0, None
    loads: Any = json.loads
    if avro:
        import io

        from fastavro import parse_schema, schemaless_reader

        parsed = parse_schema(CLICK_SCHEMA)
        loads = lambda v: schemaless_reader(io.BytesIO(v[5:]), parsed, None)  # noqa: E731
    try:
        while seen < n:
            batches = consumer.poll(timeout_ms=200)
            if batches and t0 is None:
                t0 = time.perf_counter()
            for recs in batches.values():
                if decode:
                    for r in recs:
                        loads(r.value)
                seen += len(recs)
        return n / (time.perf_counter() - (t0 or 0.0))
    finally:
        consumer.close(autocommit=False)


# ---- the trainers people use today -------------------------------------------------------
def vw_run(events: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Vowpal Wabbit, ``--loss_function logistic -q ui``: events/s and prequential log loss.

    Each example is parsed once and learned once; ``learn`` predicts before it updates,
    so the prediction read back is the test-then-train one. The text lines are made
    beforehand (VW's own input format), as our core gets pre-built batches.
    """
    from vowpalwabbit import Workspace

    lines = [vw_line(ev) for ev in events]
    y = np.array([ev["label"] for ev in events], np.float64)
    vw = Workspace("--loss_function logistic -q ui --quiet")
    raw = np.empty(len(lines))
    t0 = time.perf_counter()
    for i, line in enumerate(lines):
        ex = vw.parse(line)
        vw.learn(ex)
        raw[i] = ex.get_simplelabel_prediction()
        vw.finish_example(ex)
    dt = time.perf_counter() - t0
    vw.finish()
    return len(lines) / dt, log_loss(1 / (1 + np.exp(-raw)), y)


def river_run(events: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """River LogisticRegression (its SGD default, lr 0.01), one-hot ids and their cross."""
    from river import linear_model

    xs = [click_tokens(ev) for ev in events]
    y = np.array([ev["label"] for ev in events], np.float64)
    model = linear_model.LogisticRegression()
    p = np.empty(len(xs))
    t0 = time.perf_counter()
    for i, (x, label) in enumerate(zip(xs, y, strict=True)):
        p[i] = model.predict_proba_one(x).get(True, 0.5)
        model.learn_one(x, bool(label))
    dt = time.perf_counter() - t0
    return len(xs) / dt, log_loss(p, y)


# ---- ours -----------------------------------------------------------------------------------
def core_run(
    events: Sequence[dict[str, Any]], batch: int, **learner_args: Any
) -> tuple[float, float]:
    """The daemon's featurizer, model and Learner.step (its defaults unless overridden),
    on batches built beforehand: events/s of the steps alone and prequential log loss."""
    torch.manual_seed(0)
    featurizer = ClickFeaturizer()
    batches = [featurizer.featurize(events[i : i + batch]) for i in range(0, len(events), batch)]
    learner = Learner(build_click_model(featurizer.input_spec), featurizer.task, **learner_args)
    losses = []
    t0 = time.perf_counter()
    for fb in batches:
        losses.append(learner.step(fb.inputs, fb.targets).losses)
    dt = time.perf_counter() - t0
    return len(events) / dt, float(np.concatenate(losses).mean())


def stage_profile(bootstrap: str, topic: str, n: int) -> dict[str, float]:
    """Where the daemon's time goes: one clicks pipeline run in this thread on the
    topic, with timers around its stages; microseconds per event."""
    from stream_trainer.edges import KafkaSource
    from stream_trainer.pipeline.core import Pipeline

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as work:
        doc = {
            "kafka": {"bootstrap_servers": bootstrap},
            "checkpoint": {"dir": work},
            "device": "cpu",
            "ingest": {"workers": 0},  # the stages of one process, timed in this thread
            "pipelines": [{"name": "clicks", "kind": "clicks", "topics": [topic]}],
        }
        settings = parse_settings(doc, "bench")
        p = Pipeline(settings, settings.pipelines[0])
        source = KafkaSource(
            settings.kafka, [topic], f"profile-{time.time_ns()}", resume_from=p.resume_offsets
        )
        spent: dict[str, float] = {}
        started: list[float] = []  # when the first records arrived (after the group join)

        def timed(obj: Any, name: str, label: str) -> None:
            fn = getattr(obj, name)

            def wrapper(*args: Any, **kw: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*args, **kw)
                finally:
                    if started:
                        spent[label] = spent.get(label, 0.0) + time.perf_counter() - t

            setattr(obj, name, wrapper)

        poll = source.poll

        def first_poll(*args: Any, **kw: Any) -> Any:
            records = poll(*args, **kw)
            if records:
                started.append(time.perf_counter())
                source.poll = timed_poll
            return records

        timed(source, "poll", "kafka-python poll (the client)")
        timed_poll, source.poll = source.poll, first_poll
        timed(p, "decode", "decode + validate (msgspec, a poll at once)")
        timed(p.dedup, "seen", "duplicate check")
        timed(p.featurizer, "featurize", "featurize")
        # at the class: a challenger (the default drift action) steps too while it races,
        # and may replace the champion learner object
        own_step = Learner.step
        timed(Learner, "step", "train steps (forward, backward, optimizer; a challenger's too)")
        timed(p, "checkpoint", "checkpoints")
        stop = threading.Event()
        c = p.counters

        def watch() -> None:
            while c["trained"] + c["seeded"] + c["rejected"] < n:
                time.sleep(0.005)
            stop.set()

        threading.Thread(target=watch, daemon=True).start()
        try:
            p.run(source, None, stop)
        finally:
            source.close()
            Learner.step = own_step  # type: ignore[method-assign]
        wall = time.perf_counter() - started[0]
    out = {k: 1e6 * v / n for k, v in spent.items()}
    out["everything else (loop, batching, offsets, ledger, metrics hooks)"] = 1e6 * wall / n - sum(
        out.values()
    )
    out["total"] = 1e6 * wall / n
    return out


def gil_overlap(events: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Does a training thread overlap with Python work (ingest)? Seconds for N click-model
    steps alone, a pure-Python loop alone, and both in two threads at once."""
    featurizer = ClickFeaturizer()
    batches = [featurizer.featurize(events[i : i + 1024]) for i in range(0, 51200, 1024)]
    learner = Learner(build_click_model(featurizer.input_spec), featurizer.task)

    def steps() -> None:
        for fb in batches:
            learner.step(fb.inputs, fb.targets)

    def python(n: int) -> None:
        total = 0
        for i in range(n):
            total += i

    t = time.perf_counter()
    steps()
    t_steps = time.perf_counter() - t
    n = 1_000_000
    t = time.perf_counter()
    python(n)
    n = int(n * t_steps / (time.perf_counter() - t))  # as long as the steps take
    t = time.perf_counter()
    python(n)
    t_python = time.perf_counter() - t
    worker = threading.Thread(target=steps)
    t = time.perf_counter()
    worker.start()
    python(n)
    worker.join()
    t_both = time.perf_counter() - t
    return {"steps": t_steps, "python": t_python, "both": t_both}


# ---- the tabular stream -------------------------------------------------------------------
# A shop's own events (odd names, nesting, a string outcome) and the config that reads them:
# the tabular kind's row of `make bench`.
TABULAR_FEATURIZER: dict[str, Any] = {
    "task": "binary",
    "target": {"field": "outcome", "positive": ["returned"]},
    "numeric": ["basket.items", "basket.total", "session_s"],
    "categorical": ["device.os", "country", "channel"],
}


def tabular_events(n: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Orders whose return depends on the basket, the device and the country."""
    rng = np.random.default_rng(seed)
    oses, countries, channels = ["ios", "android", "web"], ["FR", "DE", "US", "JP"], ["ad", "mail"]
    out = []
    for i in range(n):
        items, total = int(rng.integers(1, 9)), float(np.round(rng.gamma(2.0, 30.0), 2))
        os_, country = oses[int(rng.integers(3))], countries[int(rng.integers(4))]
        logit = 0.3 * items - 0.01 * total + (0.8 if os_ == "web" else 0.0) - 1.0
        returned = rng.random() < 1 / (1 + np.exp(-logit))
        out.append({
            "order_id": f"o-{i}",
            "basket": {"items": items, "total": total},
            "session_s": float(np.round(rng.exponential(120.0), 1)),
            "device": {"os": os_},
            "country": country,
            "channel": channels[int(rng.integers(2))],
            "outcome": "returned" if returned else "kept",
        })  # fmt: skip
    return out
