"""`make bench`: every throughput and latency figure of BENCHMARKS.md, in one run.

One generated click stream (with a drift midway) is produced once to the local broker
and measured by everything: kafka-python's raw consume and consume + JSON-decode rates
(the client limit), River and Vowpal Wabbit (the trainers people glue to Kafka),
our trainer core on pre-built batches, and the daemon end to end. Then event-to-update
latency at fixed produce rates, and the daemon's RSS. Each figure is the median of
``--repeats`` runs; the daemon runs in a child process per repeat so RSS is its own.

    .venv/bin/python scripts/bench.py [--events 200000] [--repeats 3] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_trainer.config import KafkaSettings, parse_settings
from stream_trainer.edges.admin import create_topics
from stream_trainer.edges.consumer import consumer_config
from stream_trainer.evaluation.baselines import click_tokens, vw_line
from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.learner import Learner
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.models.clicks import build as build_click_model
from stream_trainer.producers.generators import KEY_FIELD, make_generator
from stream_trainer.producers.publish import publish

SEED = 7
PARTITIONS = 2
CORE_BATCHES = (256, 1024, 2048, 4096)
# Every daemon run uses a minimal config: the defaults (batching, ingest workers) are
# what is measured. The ingest-worker rows vary only ``ingest.workers``.
PRODUCER_LINGER_MS = 5  # latency runs: how long the producer holds events (in the latency)
TARGET_E2E_VS_CLIENT = 0.9
TARGET_E2E_SERIES = 0.7  # ticks, sensors
TARGET_CORE_VS_VW = 1.5
TARGET_P99_MS = 50.0
EPS = 1e-15
GPU_START, GPU_END = "<!-- gpu:start -->", "<!-- gpu:end -->"
REPLICAS_START, REPLICAS_END = "<!-- replicas:start -->", "<!-- replicas:end -->"
SERVING_START, SERVING_END = "<!-- serving:start -->", "<!-- serving:end -->"
GPU_PLACEHOLDER = f"""{GPU_START}
## GPU

Not measured yet: no GPU was at hand when this file was made. On a machine with one,
`make bench-gpu` (`scripts/bench_gpu.py`, torch and numpy only) fills this section.
{GPU_END}"""


# ---- the stream ----------------------------------------------------------------------------
def encode(ev: dict[str, Any]) -> bytes:
    return json.dumps(ev, separators=(",", ":")).encode()


def click_events(n: int) -> list[dict[str, Any]]:
    return list(make_generator("clicks", seed=SEED, count=n, drift_at=n // 2))


def fill_topic(bootstrap: str, kind: str, topic: str, events: Sequence[dict[str, Any]]) -> None:
    create_topics(bootstrap, {topic: PARTITIONS})
    key = KEY_FIELD[kind]
    pairs = ((str(ev[key]).encode(), encode(ev)) for ev in events)
    publish(bootstrap, topic, pairs, total=len(events), progress=False, linger_ms=50)


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


# ---- the client limit ---------------------------------------------------------------------
def client_rate(bootstrap: str, topic: str, n: int, decode: bool, group: str) -> float:
    """kafka-python alone, configured as the daemon's consumer: events/s from the first
    non-empty poll to the n-th record (with ``decode``: ``json.loads`` of every value)."""
    from kafka import KafkaConsumer

    settings = KafkaSettings(bootstrap_servers=bootstrap)
    consumer = KafkaConsumer(topic, **consumer_config(settings, group, "bench"))
    seen, t0 = 0, None
    loads = json.loads
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


def proc_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 when unknown)."""
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident set size of a process (this one by default), MB."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class _Recorder:
    """Wraps a pipeline's hooks: when the first records arrived, each batch's event ages."""

    def __init__(self, inner: Any, done: Callable[[], bool]) -> None:
        self.inner, self.done = inner, done
        self.first: float | None = None
        self.finished: float | None = None
        self.ages: list[tuple[float, list[float]]] = []
        self.checkpoints: list[float] = []
        self.steps: list[tuple[int, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def on_consumed(self, n: int) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        self.inner.on_consumed(n)

    def on_checkpoint(self, seconds: float, timestamp: float) -> None:
        self.checkpoints.append(seconds)
        self.inner.on_checkpoint(seconds, timestamp)

    def on_batch(self, **kw: Any) -> None:
        now = time.perf_counter()
        self.ages.append((now, kw["event_ages"]))
        self.steps.append((kw["trained"], kw["update_seconds"]))
        if self.finished is None and self.done():
            self.finished = now
        self.inner.on_batch(**kw)


def daemon_worker(a: argparse.Namespace) -> dict[str, Any]:
    """Child process: the daemon's Service on one topic until ``a.count`` events are
    processed. With ``a.rate``, a producer starts once partitions are assigned."""
    from stream_trainer.service import Service

    doc = {
        "kafka": {"bootstrap_servers": a.bootstrap, "group_prefix": a.group},
        "metrics": {"address": "127.0.0.1:0"},
        "checkpoint": {"dir": str(Path(a.workdir) / "checkpoints"), "every_seconds": 10},
        "device": "cpu",
        "ingest": {"workers": int(w) if (w := a.ingest_workers).isdigit() else w},
        "pipelines": [{"name": a.kind, "kind": a.kind, "topics": [a.topic]}],
    }
    svc = Service(parse_settings(doc, "bench"))
    p = svc.pipelines[0]
    c = p.counters
    rec = _Recorder(p.hooks, lambda: c["trained"] + c["seeded"] + c["rejected"] >= a.count)
    p.hooks = rec
    runner = threading.Thread(target=svc.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while not p.ready()[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    producer = None
    produce_start = time.perf_counter()
    workers = getattr(p.source, "workers", [])  # ingest worker processes: CPU and RSS too
    cpu_start = (
        time.process_time(),
        proc_cpu_s(a.broker_pid),
        sum(proc_cpu_s(w.process.pid) for w in workers),
    )
    if a.rate:  # the stream's events, pre-encoded: the producer only paces and sends
        producer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "stream_trainer",
                "produce",
                "--from-file",
                a.from_file,
                "--bootstrap-servers",
                a.bootstrap,
                "--topic",
                a.topic,
                "--rate",
                str(a.rate),
                "--count",
                str(a.count),
                "--linger-ms",
                str(a.linger_ms),
                "--quiet",
            ]
        )
    deadline = time.monotonic() + a.timeout
    while rec.finished is None and time.monotonic() < deadline:
        time.sleep(0.01)
    wall = time.perf_counter() - produce_start
    cpu = {
        "daemon": (time.process_time() - cpu_start[0]) / wall,
        "workers": (sum(proc_cpu_s(w.process.pid) for w in workers) - cpu_start[2]) / wall,
        "broker": (proc_cpu_s(a.broker_pid) - cpu_start[1]) / wall,
    }
    produce_seconds = None
    if producer is not None:
        _, status, usage = os.wait4(producer.pid, 0)  # the producer's own CPU time
        producer.returncode = os.waitstatus_to_exitcode(status)
        produce_seconds = time.perf_counter() - produce_start
        cpu["producer"] = (usage.ru_utime + usage.ru_stime) / produce_seconds
    rss, peak = rss_mb()
    for w in workers:
        w_rss, w_peak = rss_mb(w.process.pid)
        rss, peak = rss + w_rss, peak + w_peak
    svc.stop.set()
    runner.join(30)
    out: dict[str, Any] = {
        "processed": c["trained"] + c["seeded"] + c["rejected"],
        "rss_mb": rss,
        "peak_rss_mb": peak,
        "finished": rec.finished is not None,
        "ingest_workers": len(workers),
        "cpu_cores": cpu,
        "checkpoint_s_max": max(rec.checkpoints, default=0.0),
        "batches": len(rec.steps),
        "mean_batch": float(np.mean([n for n, _ in rec.steps])) if rec.steps else 0.0,
        "step_ms_p50": 1000 * float(np.median([s for _, s in rec.steps])) if rec.steps else 0.0,
    }
    if rec.first is not None and rec.finished is not None:
        out["events_per_s"] = a.count / (rec.finished - rec.first)
    if a.rate:
        skip_until = produce_start + a.warmup
        ages = [age for t, batch in rec.ages if t >= skip_until for age in batch]
        out["produce_rate"] = a.count / produce_seconds if produce_seconds else None
        out["latency_ms"] = {
            "p50": 1000 * float(np.percentile(ages, 50)) if ages else None,
            "p99": 1000 * float(np.percentile(ages, 99)) if ages else None,
            "max": 1000 * float(max(ages)) if ages else None,
            "events": len(ages),
        }
    return out


# The daemon's child runs this file's main from ``-c``, not as a script: an ingest worker
# (a forkserver process) imports its parent's main script again, as multiprocessing does,
# and this one imports torch, River and Vowpal Wabbit, a hundred MB and more that the
# daemon's own workers (``stream-trainer run``) never load.
WORKER_BOOT = (
    "import sys; sys.path.insert(0, {dir!r}); import bench; raise SystemExit(bench.main())"
)


def run_worker(bootstrap: str, kind: str, topic: str, count: int, **extra: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-") as work:
        argv = [
            sys.executable,
            "-c",
            WORKER_BOOT.format(dir=str(Path(__file__).parent)),
            "--worker",
            "--bootstrap",
            bootstrap,
            "--kind",
            kind,
            "--topic",
            topic,
            "--count",
            str(count),
            "--group",
            f"bench-{kind}-{time.time_ns()}",
            "--workdir",
            work,
        ]
        for k, v in extra.items():
            argv += [f"--{k.replace('_', '-')}", str(v)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"bench worker failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


# ---- the report ---------------------------------------------------------------------------
def med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: Sequence[float], fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def machine() -> dict[str, str]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    versions = {}
    for mod in ("kafka", "river", "vowpalwabbit", "crc32c"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", "present")
        except ImportError:
            versions[mod] = "not installed"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} intra-op thread(s))",
        **{k: str(v) for k, v in versions.items()},
    }


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def render(r: dict[str, Any], argv: Sequence[str]) -> str:
    n = r["events"]
    client_raw, client_dec = r["client_raw"], r["client_decode"]
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{' '.join(argv)}` (what `make bench` runs) on "
        f"{r['date']}, in {r['seconds']:.0f} s. Medians of {r['repeats']} repeats, "
        "(min–max) beside them. Regenerate rather than edit.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in r["machine"].items()) + ".",
        "",
        f"The stream: {n:,} click events (`make_generator('clicks', seed={SEED}, "
        f"drift_at={n // 2})`), produced once to the local broker (Tansu, in memory) on "
        f"{PARTITIONS} partitions; every row below reads or trains on these same events.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    for kind, target in (("clicks", TARGET_E2E_VS_CLIENT), ("ticks", TARGET_E2E_SERIES),
                         ("sensors", TARGET_E2E_SERIES)):  # fmt: skip
        if kind not in r["paired"]:
            continue
        ratio = med(r["paired"][kind])
        lines.append(
            f"| {kind} end to end ≥ {target} × client consume + decode (defaults only) | "
            f"{ratio:.2f} × (paired median; {med(r['e2e'][kind]):,.0f} events/s) | "
            f"{verdict(ratio >= target)} |"
        )
    if r.get("vw"):
        vw_rate, vw_ll = med(r["vw"]["rate"]), med(r["vw"]["ll"])
        best = [
            (med(v["rate"]) / vw_rate, bs, med(v["ll"]))
            for bs, v in r["core"].items()
            if med(v["ll"]) <= vw_ll
        ]
        if best:
            ratio, bs, ll = max(best)
            lines.append(
                f"| trainer core ≥ {TARGET_CORE_VS_VW} × VW events/s at ≤ VW log loss | "
                f"{ratio:.2f} × at batch {bs} (log loss {ll:.4f} vs VW {vw_ll:.4f}) | "
                f"{verdict(ratio >= TARGET_CORE_VS_VW)} |"
            )
        else:
            lines.append(
                f"| trainer core ≥ {TARGET_CORE_VS_VW} × VW events/s at ≤ VW log loss | "
                f"no batch size reached VW's log loss {vw_ll:.4f} | **not met** |"
            )
    top = max(r["latency"], key=int)
    p99 = med([x["p99"] for x in r["latency"][top]])
    lines.append(
        f"| p99 event-to-update latency ≤ {TARGET_P99_MS:.0f} ms at {int(top):,} events/s | "
        f"{p99:.1f} ms | {verdict(p99 <= TARGET_P99_MS)} |"
    )
    lines += [
        "",
        "## The client limit and ours, end to end",
        "",
        "| path | events/s | × client consume + decode |",
        "|---|---|---|",
        f"| kafka-python consume only | {spread(client_raw)} | "
        f"{med(client_raw) / med(client_dec):.2f} |",
        f"| kafka-python consume + `json.loads` | {spread(client_dec)} | 1.00 |",
    ]
    for kind, rates in r["e2e"].items():
        lines.append(
            f"| daemon, `{kind}` pipeline, defaults ({r['workers_used'][kind]} ingest "
            f"workers) | {spread(rates)} | {med(r['paired'][kind]):.2f} (paired) |"
        )
    lines += [
        "",
        "The daemon rows run `Service` (the daemon's code) in a child process with a "
        "minimal config (the defaults: adaptive batches of up to 256 events, "
        "`ingest.workers: auto`), from a fresh consumer group, timed from its first polled "
        "records to its last update. Each daemon run follows a client run (consume + "
        "`json.loads`) on the same topic, and the ratio is the median of those pairs: this "
        "machine's speed swings by ±30 % between runs. The ticks and sensors streams are "
        "their own generators' (sensors also publish, by default, the readings they flag "
        "as anomalies back to Kafka).",
        "",
        "## Ingest workers (clicks)",
        "",
        "| `ingest.workers` | events/s | × client (paired) | RSS, daemon + workers (MB) |",
        "|---|---|---|---|",
        *[
            f"| {w}{' (in the trainer)' if int(w) == 0 else ''} | {spread(v['rate'])} | "
            f"{med(v['paired']):.2f} | {med(v['rss']):,.0f} |"
            for w, v in sorted(r["workers"].items(), key=lambda kv: int(kv[0]))
        ],
        "",
        f"`auto` is {r['workers_used'].get('clicks', '?')} here "
        "(`edges/ingest.py: auto_workers`: the cores beside one for the trainer, shared out "
        "over the pipelines, at least one).",
        "",
        "## Trainers on the same click events (no Kafka)",
        "",
        "| trainer | events/s | prequential log loss | × VW events/s |",
        "|---|---|---|---|",
    ]
    vw_rate = med(r["vw"]["rate"]) if r.get("vw") else math.nan
    for name, key in (
        ("Vowpal Wabbit `--loss_function logistic -q ui`", "vw"),
        ("River `LogisticRegression` (one-hot ids + user×item)", "river"),
    ):
        if r.get(key):
            v = r[key]
            lines.append(
                f"| {name} | {spread(v['rate'])} | {med(v['ll']):.4f} | "
                f"{med(v['rate']) / vw_rate:.2f} |"
            )
        else:
            lines.append(f"| {name} | not installed (`pip install -e '.[bench]'`) | | |")
    for bs, v in r["core"].items():
        lines.append(
            f"| ours, trainer core, batch {bs} | {spread(v['rate'])} | {med(v['ll']):.4f} | "
            f"{med(v['rate']) / vw_rate:.2f} |"
        )
    if r.get("core_dense"):
        v = r["core_dense"]
        lines.append(
            f"| ours, batch 1024, dense embedding gradients and Adam on every weight "
            f"(before sparse embeddings) | {spread(v['rate'])} | {med(v['ll']):.4f} | "
            f"{med(v['rate']) / vw_rate:.2f} |"
        )
    lines += [
        "",
        "Trainer core: `Learner.step` with the daemon's defaults (sparse embedding gradients, "
        "Adagrad on embeddings, Adam elsewhere) on batches the click featurizer built "
        "beforehand; VW likewise gets its text lines made beforehand and parses them in the "
        "timed loop, as it must. Log loss is test-then-train over the whole stream, drift "
        "included.",
        "",
        "## Event-to-update latency at fixed produce rates",
        "",
        "| produce rate (target) | achieved | p50 ms | p99 ms | max ms | events measured "
        "| CPU cores: trainer / ingest workers / producer / broker |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate, runs in sorted(r["latency"].items(), key=lambda kv: int(kv[0])):
        cpu = " / ".join(
            f"{med([x['cpu'].get(k, 0.0) for x in runs]):.2f}"
            for k in ("daemon", "workers", "producer", "broker")
        )
        lines.append(
            f"| {int(rate):,}/s | {med([x['produce_rate'] for x in runs]):,.0f}/s | "
            f"{med([x['p50'] for x in runs]):.1f} | {spread([x['p99'] for x in runs], '{:.1f}')} | "
            f"{med([x['max'] for x in runs]):.1f} | {med([x['events'] for x in runs]):,.0f} | "
            f"{cpu} |"
        )
    lines += [
        "",
        "Latency: from the record's producer timestamp (the time the paced producer was due "
        f"to send it; it leaves with the others due in the next {PRODUCER_LINGER_MS} ms, in "
        "one produce request) to the end of the optimizer step that learned from it; the first "
        f"{r['warmup']:.0f} s of each run are left out (connections, first fetch). The "
        "producer (`stream-trainer produce`), the broker and the daemon (its trainer and "
        "ingest worker processes) share the machine: where their CPU adds up to the "
        "machine's cores, events queue and the latency is the queue's.",
        "",
        "## Where the daemon's time goes (clicks)",
        "",
        "One clicks pipeline run in the bench process on the same topic, timers around its "
        "stages (they add a little overhead of their own), microseconds per event:",
        "",
        "| stage | µs/event | share |",
        "|---|---|---|",
        *[
            f"| {k} | {v:.1f} | {100 * v / r['profile']['total']:.0f}% |"
            for k, v in r["profile"].items()
            if k != "total"
        ],
        f"| **total** | **{r['profile']['total']:.1f}** | |",
        "",
        f"For comparison, the client limit above is {1e6 / med(client_dec):.1f} µs/event "
        f"(consume + `json.loads`). Overlapping training with ingest in a second thread: "
        f"{r['gil']['steps']:.2f} s of click-model steps and {r['gil']['python']:.2f} s of "
        f"pure-Python work took {r['gil']['both']:.2f} s together in two threads "
        f"(serial: {r['gil']['steps'] + r['gil']['python']:.2f} s): the step holds the GIL "
        "for most of its time (small kernels, dispatch in Python), so a training thread "
        "buys "
        f"{100 * (1 - r['gil']['both'] / (r['gil']['steps'] + r['gil']['python'])):.0f}% here "
        "and the daemon keeps one thread per pipeline.",
        "",
        "## Memory",
        "",
        "Daemon RSS at the end of the end-to-end runs: "
        + "; ".join(
            f"{kind} {spread([x for x in r['rss'][kind]], '{:,.0f}')} MB "
            f"(peak {med(r['peak_rss'][kind]):,.0f} MB)"
            for kind in r["rss"]
        )
        + ".",
        "",
    ]
    return "\n".join(lines)


# ---- main -----------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000, help="events in the stream")
    ap.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--rates", default="1000,5000,20000", help="produce rates for latency")
    ap.add_argument("--latency-seconds", type=float, default=15.0, help="seconds per rate")
    ap.add_argument("--warmup", type=float, default=2.0, help="latency: seconds left out")
    ap.add_argument("--kinds", default="clicks,ticks,sensors", help="end-to-end pipelines")
    ap.add_argument(
        "--worker-counts", help="ingest.workers values for the clicks rows (0,1,2,cores)"
    )
    ap.add_argument("--out", default="BENCHMARKS.md", help="report file (markdown)")
    ap.add_argument("--json", help="also write the raw figures here")
    # the child process that runs the daemon
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for flag in ("--bootstrap", "--kind", "--topic", "--group", "--workdir"):
        ap.add_argument(flag, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--from-file", help=argparse.SUPPRESS)
    ap.add_argument("--broker-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--linger-ms", type=int, default=PRODUCER_LINGER_MS, help=argparse.SUPPRESS)
    ap.add_argument("--ingest-workers", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.worker:
        print(json.dumps(daemon_worker(a)))
        return 0

    t_start = time.monotonic()
    say = lambda msg: print(f"[bench {time.monotonic() - t_start:6.1f}s] {msg}", flush=True)  # noqa: E731
    n, reps = a.events, a.repeats
    r: dict[str, Any] = {
        "events": n,
        "repeats": reps,
        "warmup": a.warmup,
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    events = click_events(n)
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    with LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")) as broker:
        b = broker.bootstrap
        bpid = broker.proc.pid if broker.proc else 0
        say(f"producing {n:,} click events")
        fill_topic(b, "clicks", "bench.clicks", events)

        r["client_raw"], r["client_decode"] = [], []
        for i in range(reps):
            r["client_raw"].append(client_rate(b, "bench.clicks", n, False, f"raw-{i}"))
            r["client_decode"].append(client_rate(b, "bench.clicks", n, True, f"dec-{i}"))
            say(f"client: raw {r['client_raw'][-1]:,.0f}/s, decode {r['client_decode'][-1]:,.0f}/s")

        for name, fn in (("vw", vw_run), ("river", river_run)):
            try:
                runs = [fn(events) for _ in range(reps)]
            except ImportError as err:
                say(f"{name}: skipped ({err})")
                continue
            r[name] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
            say(f"{name}: {med(r[name]['rate']):,.0f}/s, log loss {med(r[name]['ll']):.4f}")

        r["core"] = {}
        for bs in CORE_BATCHES:
            runs = [core_run(events, bs) for _ in range(reps)]
            r["core"][bs] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
            say(f"core batch {bs}: {med(r['core'][bs]['rate']):,.0f}/s")
        # the step as it was before sparse embeddings: dense gradients, Adam on everything
        runs = [core_run(events, 1024, sparse_embeddings=False) for _ in range(reps)]
        r["core_dense"] = {"rate": [x[0] for x in runs], "ll": [x[1] for x in runs]}
        say(f"core batch 1024, dense embeddings: {med(r['core_dense']['rate']):,.0f}/s")

        # Each daemon run right after a client run on the same topic: the machine's speed
        # swings between runs, so the ratio that counts is the median of these pairs.
        r["e2e"], r["rss"], r["peak_rss"], r["paired"], r["workers_used"] = {}, {}, {}, {}, {}
        for kind in a.kinds.split(","):
            topic = "bench.clicks"
            if kind != "clicks":
                topic = f"bench.{kind}"
                fill_topic(b, kind, topic, list(make_generator(kind, seed=SEED, count=n)))
            runs, pairs = [], []
            for i in range(reps):
                client = client_rate(b, topic, n, True, f"pair-{kind}-{i}")
                runs.append(run_worker(b, kind, topic, n, broker_pid=bpid))
                pairs.append(runs[-1]["events_per_s"] / client)
            if not all(x["finished"] for x in runs):
                raise RuntimeError(f"{kind}: the daemon did not process all events: {runs}")
            r["e2e"][kind] = [x["events_per_s"] for x in runs]
            r["paired"][kind] = pairs
            r["workers_used"][kind] = runs[0]["ingest_workers"]
            r["rss"][kind] = [x["rss_mb"] for x in runs]
            r["peak_rss"][kind] = [x["peak_rss_mb"] for x in runs]
            say(f"daemon {kind}: {med(r['e2e'][kind]):,.0f}/s, {med(pairs):.2f} x client (paired)")

        # ingest.workers 0 (all in the trainer's process), 1, 2 and one per core
        r["workers"] = {}
        counts = a.worker_counts or f"0,1,2,{os.cpu_count() or 1}"
        for w in sorted({int(x) for x in counts.split(",")}):
            runs, pairs = [], []
            for i in range(reps):
                client = client_rate(b, "bench.clicks", n, True, f"pair-w{w}-{i}")
                runs.append(run_worker(b, "clicks", "bench.clicks", n, broker_pid=bpid,
                                       ingest_workers=w))  # fmt: skip
                pairs.append(runs[-1]["events_per_s"] / client)
            r["workers"][w] = {
                "rate": [x["events_per_s"] for x in runs],
                "paired": pairs,
                "rss": [x["rss_mb"] for x in runs],
            }
            say(f"clicks, {w} ingest workers: {med(r['workers'][w]['rate']):,.0f}/s")

        say("profiling the clicks pipeline's stages")
        r["profile"] = stage_profile(b, "bench.clicks", n)
        r["gil"] = gil_overlap(events)

        r["latency"] = {}
        rates = [int(x) for x in a.rates.split(",")]
        jsonl = work / "clicks.jsonl"
        longest = int(max(rates) * a.latency_seconds)
        with open(jsonl, "wb") as fh:  # the same stream, as long as the fastest run needs
            for ev in make_generator("clicks", seed=SEED, count=longest, drift_at=n // 2):
                fh.write(encode(ev) + b"\n")
        for rate in rates:
            count = int(rate * a.latency_seconds)
            runs = []
            for i in range(reps):
                x = run_worker(
                    b,
                    "clicks",
                    f"bench.latency.{rate}.{i}",
                    count,
                    rate=rate,
                    from_file=jsonl,
                    broker_pid=bpid,
                    warmup=a.warmup,
                    timeout=a.latency_seconds * 4 + 60,
                )
                if not x["finished"]:
                    raise RuntimeError(f"latency at {rate}/s: not all events trained: {x}")
                runs.append(
                    {**x["latency_ms"], "produce_rate": x["produce_rate"], "cpu": x["cpu_cores"]}
                )
            r["latency"][rate] = runs
            say(
                f"latency at {rate}/s: p50 {med([x['p50'] for x in runs]):.1f} ms, "
                f"p99 {med([x['p99'] for x in runs]):.1f} ms"
            )
    r["seconds"] = time.monotonic() - t_start
    argv = ["scripts/bench.py", *sys.argv[1:]]
    out = Path(a.out)
    report = render(r, argv)
    old = out.read_text() if out.exists() else ""
    if GPU_START in old and GPU_END in old:  # keep the last GPU run's figures
        report += "\n" + GPU_START + old.split(GPU_START, 1)[1].split(GPU_END, 1)[0] + GPU_END
    else:
        report += "\n" + GPU_PLACEHOLDER
    for start, end in ((REPLICAS_START, REPLICAS_END), (SERVING_START, SERVING_END)):
        if start in old and end in old:  # and of `make bench-replicas`, `bench-serving`
            kept = old.split(start, 1)[1].split(end, 1)[0]
            report += "\n\n" + start + kept + end
    out.write_text(report + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    say(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
