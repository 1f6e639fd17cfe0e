"""The argument parser: one small function per command's flags."""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

from stream_trainer import __version__
from stream_trainer.cli.flags import ENV, KINDS, add_flag, add_logging_flags

Subparsers = Any  # argparse's private _SubParsersAction

STUDIES = ("compare", "adaptation", "replay", "drift-suite", "delayed-labels")


def build_parser() -> argparse.ArgumentParser:
    """``stream-trainer`` and its commands, in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="stream-trainer",
        description="Online continual learning on Kafka event streams (test-then-train).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_broker, _produce, _run, _demo, _report, _evaluate, _check_config, _checkpoint):
        add_logging_flags(add(sub))
    return parser


def _broker(sub: Subparsers) -> argparse.ArgumentParser:
    b = sub.add_parser("broker", help="run the local Kafka-protocol broker (Tansu, in memory)")
    add_flag(b, "--port", scope="broker", type=int, default=9092, help="TCP port")
    add_flag(b, "--host", scope="broker", default="127.0.0.1", help="listen address")
    return b


def _produce(sub: Subparsers) -> argparse.ArgumentParser:
    pr = sub.add_parser("produce", help="publish synthetic events (with drift) or a JSONL file")
    pr.add_argument("kind", nargs="?", choices=KINDS, help="synthetic stream to generate")
    flag = partial(add_flag, pr, scope="produce")
    flag("--from-file", metavar="FILE", help="publish this JSON-lines file as-is, in order")
    flag("--bootstrap-servers", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    flag("--topic", help="target topic (default: the kind's name)")
    flag("--rate", type=float, default=0.0, help="events per second, 0 = as fast as possible")
    flag("--count", type=int, help="number of events (default: unbounded)")
    flag("--seed", type=int, default=0, help="random seed of the hidden truth")
    flag(
        "--stream",
        type=int,
        default=0,
        help="which stream of the seed: the same hidden truth, other events (0: the seed's own)",
    )
    flag("--drift-at", type=int, help="change the hidden truth at this event index")
    flag("--drift-every", type=int, help="change the hidden truth every N events")
    flag(
        "--delayed-labels",
        action="store_true",
        help="clicks: impressions (no label, a request_id) to --topic, and each click's "
        "label {request_id, label, ts} to --labels-topic after a heavy-tailed delay, in "
        "event-time order (what a pipeline's labels: joins); --rate paces the impressions",
    )
    flag("--labels-topic", help="with --delayed-labels: the labels' topic (default: TOPIC.labels)")
    flag(
        "--min-delay",
        type=float,
        default=1.0,
        help="with --delayed-labels: the shortest click delay, event-time seconds",
    )
    flag(
        "--max-delay",
        type=float,
        default=600.0,
        help="with --delayed-labels: the longest click delay (the heavy tail is cut here)",
    )
    flag("--key-field", help="with --from-file: JSON field to use as the message key")
    flag(
        "--config",
        help="with --from-file: the pipelines YAML; --pipeline names the one whose events "
        "the file holds (its topic, its key field's path, its format)",
    )
    flag("--pipeline", help="with --config: the pipeline (default: the only one)")
    flag(
        "--format",
        choices=["json", "avro"],
        help="with --config: publish the JSON lines as they are, or encoded as Avro with "
        "the pipeline's schema (schemas: DIR: the highest id's, Confluent-framed; default: "
        "the pipeline's format)",
    )
    flag("--partitions", type=int, default=2, help="partitions if the topic is created")
    flag(
        "--linger-ms",
        type=int,
        default=10,
        help="producer batching delay: larger batches, fewer requests, a little more latency",
    )
    flag("--quiet", action="store_true", help="no progress output")
    return pr


def _run(sub: Subparsers) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="run the training daemon")
    add_flag(r, "--config", required=True, help="pipelines YAML file")
    add_flag(r, "--bootstrap-servers", help="override kafka.bootstrap_servers")
    add_flag(r, "--metrics-address", help="override metrics.address (HOST:PORT)")
    add_flag(r, "--checkpoint-dir", help="override checkpoint.dir")
    add_flag(
        r,
        "--from",
        dest="start_from",
        metavar="WHERE",
        help="override source.start_from: where a model without offsets starts reading: "
        "committed (the group's offsets), earliest, latest, or a time such as "
        "2026-11-01T00:00Z (the first event at or after it; UTC if no zone); a "
        "restored checkpoint's offsets win",
    )
    add_flag(
        r,
        "--ignore-checkpoint-offsets",
        action="store_true",
        help="for this start: keep the restored model but read from --from (or "
        "source.start_from), not from where its checkpoint stopped",
    )
    return r


def _demo(sub: Subparsers) -> argparse.ArgumentParser:
    d = sub.add_parser("demo", help="broker + producers + daemon + live summary (make run)")
    flag = partial(add_flag, d, scope="demo")
    flag(
        "--duration",
        type=float,
        help="stop this many seconds after the daemon first answers (default: Ctrl-C)",
    )
    add_flag(
        d,
        "--port",
        env=ENV + "DEMO_BROKER_PORT",
        type=int,
        default=9092,
        help="broker port (a free one is used if taken, or if 0)",
    )
    flag("--metrics-address", default="127.0.0.1:9108", help="daemon metrics address")
    flag(
        "--serving-address",
        default="127.0.0.1:9109",
        help="the daemon's POST /predict address (a free port is used if taken)",
    )
    flag("--workdir", default=".demo", help="checkpoints, logs and config of the demo")
    flag("--rate", type=float, default=1000.0, help="events per second for each producer")
    return d


def _report(sub: Subparsers) -> argparse.ArgumentParser:
    rp = sub.add_parser("report", help="draw loss over time per pipeline (PNG), with drifts")
    flag = partial(add_flag, rp, scope="report")
    flag("--prometheus", help="Prometheus base URL to query")
    flag("--history", help="history file written by the daemon")
    flag("--minutes", type=float, default=60.0, help="with --prometheus: how far back")
    flag("--out", default="loss.png", help="PNG to write")
    return rp


def _evaluate(sub: Subparsers) -> argparse.ArgumentParser:
    ev = sub.add_parser(
        "evaluate",
        help="offline: our pipeline vs River, Vowpal Wabbit and trivial baselines on one stream",
    )
    flag = partial(add_flag, ev, scope="evaluate")
    flag(
        "--study",
        choices=STUDIES,
        default="compare",
        help="what to run: compare = our pipeline vs the baselines on one stream; "
        "adaptation = our pipeline under each drift policy (none, reset_optimizer + "
        "boost_lr, reset_model, challenger) and the events each takes to recover; "
        "replay = clicks drifting A -> B -> A, our pipeline with and without replay; "
        "drift-suite = drift detectors on streams with known change points (river's SEA, "
        "STAGGER, Agrawal, Hyperplane, FriedmanDrift; our clicks, ticks, sensors; --events "
        "per river stream, 400000 if not given); delayed-labels = clicks learned with "
        "labels inline and as impressions + clicks 1 s-10 min late (non-clicks negative "
        "after 15 min) through our joiner, beside River's progressive_val_score with the "
        "same delays (no drift unless --drift-at)",
    )
    flag(
        "--kind",
        choices=KINDS,
        help="event kind (which pipeline and baselines); required but with --study drift-suite",
    )
    flag("--input", metavar="FILE", help="JSON-lines events to replay")
    flag(
        "--scenario",
        choices=("rare-clicks", "random-walk", "level-shifts"),
        help="a generated stream the trivial baselines are hard to beat on: rare-clicks "
        "(click rate ~0.3%%), random-walk (ticks with no signal), level-shifts (sensors "
        "whose levels jump now and then); implies its --kind; no drift unless --drift-at",
    )
    flag(
        "--events",
        type=int,
        help="events to generate (default 100000), or at most this many from --input",
    )
    flag("--seed", type=int, default=0, help="generator seed")
    flag(
        "--drift-at",
        type=int,
        help="generated stream: where its hidden truth changes (default: midway)",
    )
    flag(
        "--config", help="take the pipeline (model, featurizer, optimizer, batch) from this config"
    )
    flag("--json", action="store_true", help="print JSON, not markdown")
    flag("--no-vw", action="store_true", help="leave Vowpal Wabbit out")
    flag(
        "--no-trees",
        action="store_true",
        help="leave River's Hoeffding adaptive trees out (the slowest baselines)",
    )
    flag("--quiet", action="store_true", help="no progress lines")
    return ev


def _check_config(sub: Subparsers) -> argparse.ArgumentParser:
    c = sub.add_parser("check-config", help="validate a config and print the effective one")
    c.add_argument("file", help="pipelines YAML file")
    return c


def _checkpoint(sub: Subparsers) -> argparse.ArgumentParser:
    c = sub.add_parser("checkpoint", help="what a checkpoint holds (inspect)")
    what = c.add_subparsers(dest="action", required=True, metavar="ACTION")
    i = what.add_parser(
        "inspect",
        help="format and package version, pipeline, kind, offsets, model version, tensors",
    )
    i.add_argument("path", help="a ckpt-*.pt file, a pipeline's directory, or checkpoint.dir")
    i.add_argument("--json", action="store_true", help="one JSON document per file")
    e = what.add_parser(
        "export", help="the model /predict serves, to serve elsewhere, with a model card"
    )
    e.add_argument("path", help="a ckpt-*.pt file, or a pipeline's checkpoint directory")
    e.add_argument(
        "--format", required=True, choices=("onnx", "safetensors"),
        help="onnx: the served score as one graph; safetensors: the weights",
    )  # fmt: skip
    e.add_argument("--out", required=True, help="directory for the model and model_card.json")
    e.add_argument("--config", help="pipelines YAML (only for files written before 0.2.0)")
    e.add_argument("--pipeline", help="the pipeline's name in --config (default: the file's)")
    return c
