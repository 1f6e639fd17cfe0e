"""The commands but ``evaluate``: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from stream_trainer import stopping
from stream_trainer.errors import StreamTrainerError

log = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_broker(a: argparse.Namespace) -> int:
    """Run the local broker until a signal (or until it dies: an error)."""
    from stream_trainer.local.broker import LocalBroker

    stop = _stop_on_signals()
    with LocalBroker(port=a.port, host=a.host) as broker:
        print(f"broker ready on {broker.bootstrap} (in memory; Ctrl-C to stop)", flush=True)
        while not stop.is_set() and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.5)  # the main thread polls; never stop.wait() (see service.py)
        if broker.proc is not None and broker.proc.poll() is not None and not stop.is_set():
            raise StreamTrainerError(
                f"the broker exited unexpectedly (code {broker.proc.returncode})"
            )
    print("broker stopped", flush=True)
    return 0


def cmd_produce(a: argparse.Namespace) -> int:
    """Publish a synthetic stream or a JSON-lines file."""
    from stream_trainer.edges.admin import create_topics
    from stream_trainer.producers.publish import publish

    if bool(a.kind) == bool(a.from_file):
        raise StreamTrainerError("give either a KIND (clicks, ticks, sensors) or --from-file FILE")
    if a.from_file and a.config:
        _pipeline_file(a)
    elif a.pipeline or a.format:
        raise StreamTrainerError("--pipeline and --format go with --config")
    events, count, key_field = _file_events(a) if a.from_file else _synthetic_events(a)
    topic = a.topic or a.kind
    topics = {topic: int(a.partitions)}
    labels_topic = None
    if a.delayed_labels:
        events, labels_topic = _delayed_labels(a, events, topic)
        topics[labels_topic] = int(a.partitions)
    elif a.labels_topic:
        raise StreamTrainerError("--labels-topic goes with --delayed-labels")
    create_topics(a.bootstrap_servers, topics)
    stop = _stop_on_signals()
    asides: dict[str, int] = {}
    sent = publish(
        a.bootstrap_servers,
        topic,
        events,
        key_field=key_field,
        rate=float(a.rate),
        total=count,
        stop=stop,
        progress=not a.quiet,
        linger_ms=int(a.linger_ms),
        asides=asides,
    )
    extra: dict[str, Any] = {"topic": topic, "events": sent}
    if labels_topic is not None:
        extra.update(labels_topic=labels_topic, labels=asides.get(labels_topic, 0))
    logging.getLogger("stream_trainer.produce").info("produced", extra=extra)
    return 0


def _delayed_labels(a: argparse.Namespace, events: Any, topic: str) -> tuple[Any, str]:
    """Impressions for ``topic`` and, in event-time order among them, each click's label
    for the labels topic (``producers/delayed.py``); the labels topic's name."""
    from stream_trainer.producers.delayed import IMPRESSION, delayed_labels
    from stream_trainer.producers.publish import Aside

    if a.kind != "clicks":
        raise StreamTrainerError("--delayed-labels needs the clicks stream: produce clicks ...")
    lo, hi = float(a.min_delay), float(a.max_delay)
    if not 0 < lo <= hi:
        raise StreamTrainerError(
            f"--min-delay ({lo:g}) must be above 0 and at most --max-delay ({hi:g})"
        )
    labels_topic = a.labels_topic or f"{topic}.labels"
    if labels_topic == topic:
        raise StreamTrainerError("--labels-topic must differ from --topic")
    stream = delayed_labels(
        events,
        seed=int(a.seed),
        min_delay_s=lo,
        max_delay_s=hi,
        id_prefix=f"r{int(a.seed)}-{int(a.stream)}-",  # other seeds' ids never collide
    )
    out = (doc if kind == IMPRESSION else Aside(labels_topic, doc, "request_id")
           for kind, doc in stream)  # fmt: skip
    return out, labels_topic


def _file_events(a: argparse.Namespace) -> tuple[Any, int | None, str | None]:
    """The file's lines (at most ``--count``), their total, and no key field."""
    from stream_trainer.producers.files import read_jsonl

    count = int(a.count) if a.count is not None else None
    if not a.topic:
        raise StreamTrainerError("--from-file needs --topic")
    events: Any = read_jsonl(a.from_file)
    if count is not None:
        events = itertools.islice(events, count)
    else:  # a total for the progress bar: one quick pass that only counts lines
        count = sum(1 for _ in read_jsonl(a.from_file))
    if getattr(a, "wire", False) is not False:  # --config: keys by path, maybe Avro
        from stream_trainer.producers.files import pipeline_lines

        events = pipeline_lines(events, a.wire, a.key_field, a.format)
    elif a.key_field:
        events = (_keyed(line, a.key_field) for line in events)
    return events, count, None


def _pipeline_file(a: argparse.Namespace) -> None:
    """``--config`` (and ``--pipeline``): the topic, key path and format of the file's
    events, from the pipeline that learns them, where the flags leave them unset."""
    from stream_trainer import domains
    from stream_trainer.config import load_settings

    settings = load_settings(a.config)
    names = [p.name for p in settings.pipelines]
    if a.pipeline is None and len(names) != 1:
        raise StreamTrainerError(f"--pipeline: which one of {', '.join(names)}?")
    p = next((p for p in settings.pipelines if p.name == (a.pipeline or names[0])), None)
    if p is None:
        raise StreamTrainerError(f"--pipeline {a.pipeline}: not in {a.config} ({', '.join(names)})")
    a.topic = a.topic or p.topics[0]
    key = domains.get(p.kind).key_field
    if not a.key_field and key is not None:
        mapped = p.fields.spec().get(key) if p.fields is not None else None
        a.key_field = mapped if isinstance(mapped, str) else key
    a.format = a.format or p.format
    a.wire = p.wire()


def _synthetic_events(a: argparse.Namespace) -> tuple[Any, int | None, str | None]:
    """The kind's generator, its count (``None``: unbounded) and its key field."""
    from stream_trainer.producers import generators

    if a.kind not in generators.GENERATORS:
        raise StreamTrainerError(f"kind {a.kind!r} has no synthetic stream: use --from-file FILE")
    count = int(a.count) if a.count is not None else None
    events = generators.make_generator(
        a.kind,
        seed=int(a.seed),
        stream=int(a.stream),
        count=count,
        drift_at=int(a.drift_at) if a.drift_at is not None else None,
        drift_every=int(a.drift_every) if a.drift_every is not None else None,
    )
    return events, count, generators.KEY_FIELD[a.kind]


def _keyed(line: bytes, field: str) -> tuple[bytes | None, bytes]:
    """Keep the raw bytes as they are; decode only to find the key."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None, line
    key = doc.get(field) if isinstance(doc, dict) else None
    return (str(key).encode() if key is not None else None), line


def cmd_run(a: argparse.Namespace) -> int:
    """Run the training daemon until a signal; its exit code."""
    from stream_trainer.config import load_settings
    from stream_trainer.service import Service

    settings = load_settings(a.config, overrides=run_overrides(a))
    if signal_name := stopping.requested():  # during the imports: nothing to stop yet
        log.info("stopped before the pipelines started", extra={"signal": signal_name})
        log.info("stopped", extra={"exit_code": 0})  # (every run's last line)
        return 0
    service = Service(settings, ignore_checkpoint_offsets=bool(a.ignore_checkpoint_offsets))
    service.install_signal_handlers(stopping.current())  # and a signal from the start-up
    code = service.run()
    rank = {"rank": service.world.rank} if service.world.replicated else {}
    log.info("stopped", extra={"exit_code": code, **rank})
    if service.world.replicated:
        from stream_trainer import distributed
        from stream_trainer.service import EXIT_STALLED

        if code == EXIT_STALLED:  # the group is broken: tearing it down may hang
            logging.shutdown()
            os._exit(code)
        distributed.shutdown()
    return code


def run_overrides(a: argparse.Namespace) -> dict[str, Any]:
    """``run``'s flags that override the config file (and its environment variables)."""
    overrides: dict[str, Any] = {}
    for flag, section, key in [("bootstrap_servers", "kafka", "bootstrap_servers"),
                               ("metrics_address", "metrics", "address"),
                               ("checkpoint_dir", "checkpoint", "dir"),
                               ("start_from", "source", "start_from")]:  # fmt: skip
        if getattr(a, flag):
            overrides.setdefault(section, {})[key] = getattr(a, flag)
    return overrides


def cmd_check_config(a: argparse.Namespace) -> int:
    """Validate a config (models and featurizers built too) and print the effective one."""
    from stream_trainer.config import dump_settings, load_settings
    from stream_trainer.models.registry import build_featurizer, build_model

    settings = load_settings(a.file)
    for p in settings.pipelines:  # also resolve plugins and parameters, without Kafka
        build_model(p.kind, p.model, build_featurizer(p.kind, p.featurizer))
    sys.stdout.write(dump_settings(settings))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    """Broker, producers and daemon together, with a live summary."""
    from stream_trainer.local.demo import Demo

    return Demo(
        workdir=a.workdir,
        port=int(a.port),
        metrics_address=a.metrics_address,
        rate=float(a.rate),
        log_level=a.log_level,
        serving_address=a.serving_address,
    ).run(duration=float(a.duration) if a.duration is not None else None)


def cmd_report(a: argparse.Namespace) -> int:
    """Draw loss over time from Prometheus or a history file."""
    from stream_trainer.evaluation import report

    if bool(a.prometheus) == bool(a.history):
        raise StreamTrainerError("give either --prometheus URL or --history FILE")
    history = (
        report.from_prometheus(a.prometheus, float(a.minutes))
        if a.prometheus
        else report.from_history(a.history)
    )
    path = report.draw(history, a.out)
    drifts = sum(len(s.drifts) for s in history.values())
    print(f"wrote {path}: {len(history)} pipelines, {drifts} drift detections")
    return 0
