"""``stream-trainer`` command line. Every flag can also come from an environment variable,
named in ``--help`` (``STREAM_TRAINER_<FLAG>``)."""

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
from collections.abc import Sequence
from typing import Any

from stream_trainer import __version__
from stream_trainer.errors import StreamTrainerError
from stream_trainer.log import setup_logging

ENV = "STREAM_TRAINER_"
KINDS = ("clicks", "ticks", "sensors")


def _env_name(flag: str, scope: str = "") -> str:
    """``--drift-at`` of ``produce`` -> ``STREAM_TRAINER_PRODUCE_DRIFT_AT``."""
    name = (f"{scope}_" if scope else "") + flag.lstrip("-")
    return ENV + name.replace("-", "_").upper()


def _flag(
    p: argparse.ArgumentParser, flag: str, *, env: str | None = None, scope: str = "", **kw: Any
) -> None:
    """Add ``flag`` whose default comes from its environment variable when set."""
    env = env or _env_name(flag, scope)
    help_text = kw.pop("help", "")
    default = kw.pop("default", None)
    if env in os.environ:
        raw = os.environ[env]
        if kw.get("action") == "store_true":
            default = raw.strip().lower() in ("1", "true", "yes", "on")
        else:
            default = raw
        kw.pop("required", None)
    shown = f" (default: {default})" if default not in (None, False, "") else ""
    p.add_argument(flag, default=default, help=f"{help_text}{shown} [env: {env}]", **kw)


def _common_logging(p: argparse.ArgumentParser) -> None:
    _flag(
        p,
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity",
    )
    _flag(p, "--log-format", default="text", choices=["text", "json"], help="log line format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stream-trainer",
        description="Online continual learning on Kafka event streams (test-then-train).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the local Kafka-protocol broker (Tansu, in memory)")
    _flag(b, "--port", scope="broker", type=int, default=9092, help="TCP port")
    _flag(b, "--host", scope="broker", default="127.0.0.1", help="listen address")
    _common_logging(b)

    pr = sub.add_parser("produce", help="publish synthetic events (with drift) or a JSONL file")
    pr.add_argument("kind", nargs="?", choices=KINDS, help="synthetic stream to generate")
    _flag(
        pr,
        "--from-file",
        scope="produce",
        metavar="FILE",
        help="publish this JSON-lines file as-is, in order",
    )
    _flag(
        pr,
        "--bootstrap-servers",
        scope="produce",
        default="127.0.0.1:9092",
        help="Kafka bootstrap servers",
    )
    _flag(pr, "--topic", scope="produce", help="target topic (default: the kind's name)")
    _flag(
        pr,
        "--rate",
        scope="produce",
        type=float,
        default=0.0,
        help="events per second, 0 = as fast as possible",
    )
    _flag(pr, "--count", scope="produce", type=int, help="number of events (default: unbounded)")
    _flag(
        pr, "--seed", scope="produce", type=int, default=0, help="random seed of the hidden truth"
    )
    _flag(
        pr,
        "--stream",
        scope="produce",
        type=int,
        default=0,
        help="which stream of the seed: the same hidden truth, other events (0: the seed's own)",
    )
    _flag(
        pr,
        "--drift-at",
        scope="produce",
        type=int,
        help="change the hidden truth at this event index",
    )
    _flag(
        pr,
        "--drift-every",
        scope="produce",
        type=int,
        help="change the hidden truth every N events",
    )
    _flag(
        pr,
        "--key-field",
        scope="produce",
        help="with --from-file: JSON field to use as the message key",
    )
    _flag(
        pr,
        "--partitions",
        scope="produce",
        type=int,
        default=2,
        help="partitions if the topic is created",
    )
    _flag(
        pr,
        "--linger-ms",
        scope="produce",
        type=int,
        default=10,
        help="producer batching delay: larger batches, fewer requests, a little more latency",
    )
    _flag(pr, "--quiet", scope="produce", action="store_true", help="no progress output")
    _common_logging(pr)

    r = sub.add_parser("run", help="run the training daemon")
    _flag(r, "--config", required=True, help="pipelines YAML file")
    _flag(r, "--bootstrap-servers", help="override kafka.bootstrap_servers")
    _flag(r, "--metrics-address", help="override metrics.address (HOST:PORT)")
    _flag(r, "--checkpoint-dir", help="override checkpoint.dir")
    _common_logging(r)

    d = sub.add_parser("demo", help="broker + producers + daemon + live summary (make run)")
    _flag(
        d,
        "--duration",
        scope="demo",
        type=float,
        help="stop after this many seconds (default: Ctrl-C)",
    )
    _flag(
        d,
        "--port",
        env=ENV + "DEMO_BROKER_PORT",
        type=int,
        default=9092,
        help="broker port (a free one is used if taken, or if 0)",
    )
    _flag(
        d,
        "--metrics-address",
        scope="demo",
        default="127.0.0.1:9108",
        help="daemon metrics address",
    )
    _flag(
        d,
        "--workdir",
        scope="demo",
        default=".demo",
        help="checkpoints, logs and config of the demo",
    )
    _flag(
        d,
        "--rate",
        scope="demo",
        type=float,
        default=1000.0,
        help="events per second for each producer",
    )
    _common_logging(d)

    rp = sub.add_parser("report", help="draw loss over time per pipeline (PNG), with drifts")
    _flag(rp, "--prometheus", scope="report", help="Prometheus base URL to query")
    _flag(rp, "--history", scope="report", help="history file written by the daemon")
    _flag(
        rp,
        "--minutes",
        scope="report",
        type=float,
        default=60.0,
        help="with --prometheus: how far back",
    )
    _flag(rp, "--out", scope="report", default="loss.png", help="PNG to write")
    _common_logging(rp)

    ev = sub.add_parser(
        "evaluate",
        help="offline: our pipeline vs River, Vowpal Wabbit and trivial baselines on one stream",
    )
    _flag(
        ev,
        "--kind",
        scope="evaluate",
        choices=KINDS,
        help="event kind (which pipeline and baselines); required but with --drift-suite",
    )
    _flag(ev, "--input", scope="evaluate", metavar="FILE", help="JSON-lines events to replay")
    _flag(
        ev,
        "--events",
        scope="evaluate",
        type=int,
        help="events to generate (default 100000), or at most this many from --input",
    )
    _flag(ev, "--seed", scope="evaluate", type=int, default=0, help="generator seed")
    _flag(
        ev,
        "--drift-at",
        scope="evaluate",
        type=int,
        help="generated stream: where its hidden truth changes (default: midway)",
    )
    _flag(
        ev,
        "--config",
        scope="evaluate",
        help="take the pipeline (model, featurizer, optimizer, batch) from this config",
    )
    _flag(ev, "--json", scope="evaluate", action="store_true", help="print JSON, not markdown")
    _flag(ev, "--no-vw", scope="evaluate", action="store_true", help="leave Vowpal Wabbit out")
    _flag(
        ev,
        "--no-trees",
        scope="evaluate",
        action="store_true",
        help="leave River's Hoeffding adaptive trees out (the slowest baselines)",
    )
    _flag(
        ev,
        "--adaptation",
        scope="evaluate",
        action="store_true",
        help="instead: our pipeline under each drift policy (none, reset_optimizer + "
        "boost_lr, reset_model, challenger) and the events each takes to recover",
    )
    _flag(
        ev,
        "--replay-study",
        scope="evaluate",
        action="store_true",
        help="instead: clicks drifting A -> B -> A, our pipeline with and without replay",
    )
    _flag(
        ev,
        "--drift-suite",
        scope="evaluate",
        action="store_true",
        help="instead: drift detectors on streams with known change points (river's SEA, "
        "STAGGER, Agrawal, Hyperplane, FriedmanDrift; our clicks, ticks, sensors); "
        "--events per river stream (default 400000)",
    )
    _flag(ev, "--quiet", scope="evaluate", action="store_true", help="no progress lines")
    _common_logging(ev)

    c = sub.add_parser("check-config", help="validate a config and print the effective one")
    c.add_argument("file", help="pipelines YAML file")
    _common_logging(c)
    return parser


def cmd_broker(a: argparse.Namespace) -> int:
    from stream_trainer.local.broker import LocalBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
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
    from stream_trainer.edges.admin import create_topics
    from stream_trainer.producers import generators
    from stream_trainer.producers.publish import publish, read_jsonl

    if bool(a.kind) == bool(a.from_file):
        raise StreamTrainerError("give either a KIND (clicks, ticks, sensors) or --from-file FILE")
    count = int(a.count) if a.count is not None else None
    key_field = None
    if a.from_file:
        if not a.topic:
            raise StreamTrainerError("--from-file needs --topic")
        events: Any = read_jsonl(a.from_file)
        if count is not None:
            events = itertools.islice(events, count)
        else:  # a total for the progress bar: one quick pass that only counts lines
            count = sum(1 for _ in read_jsonl(a.from_file))
        if a.key_field:
            events = (_keyed(line, a.key_field) for line in events)
    else:
        events = generators.make_generator(
            a.kind,
            seed=int(a.seed),
            stream=int(a.stream),
            count=count,
            drift_at=int(a.drift_at) if a.drift_at is not None else None,
            drift_every=int(a.drift_every) if a.drift_every is not None else None,
        )
        key_field = generators.KEY_FIELD[a.kind]
    topic = a.topic or a.kind
    create_topics(a.bootstrap_servers, {topic: int(a.partitions)})
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
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
    )
    logging.getLogger("stream_trainer.produce").info(
        "produced", extra={"topic": topic, "events": sent}
    )
    return 0


def _keyed(line: bytes, field: str) -> tuple[bytes | None, bytes]:
    """Keep the raw bytes as they are; decode only to find the key."""
    try:
        doc = json.loads(line)
    except ValueError:
        return None, line
    key = doc.get(field) if isinstance(doc, dict) else None
    return (str(key).encode() if key is not None else None), line


def cmd_run(a: argparse.Namespace) -> int:
    from stream_trainer.config import load_settings
    from stream_trainer.service import Service

    overrides: dict[str, Any] = {}
    if a.bootstrap_servers:
        overrides.setdefault("kafka", {})["bootstrap_servers"] = a.bootstrap_servers
    if a.metrics_address:
        overrides.setdefault("metrics", {})["address"] = a.metrics_address
    if a.checkpoint_dir:
        overrides.setdefault("checkpoint", {})["dir"] = a.checkpoint_dir
    settings = load_settings(a.config, overrides=overrides)
    service = Service(settings)
    service.install_signal_handlers()
    code = service.run()
    if service.world.replicated:
        from stream_trainer import distributed
        from stream_trainer.service import EXIT_STALLED

        if code == EXIT_STALLED:  # the group is broken: tearing it down may hang
            logging.shutdown()
            os._exit(code)
        distributed.shutdown()
    return code


def cmd_check_config(a: argparse.Namespace) -> int:
    from stream_trainer.config import dump_settings, load_settings
    from stream_trainer.models.registry import build_featurizer, build_model

    settings = load_settings(a.file)
    for p in settings.pipelines:  # also resolve plugins and parameters, without Kafka
        build_model(p.kind, p.model, build_featurizer(p.kind, p.featurizer))
    sys.stdout.write(dump_settings(settings))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from stream_trainer.local.demo import Demo

    return Demo(
        workdir=a.workdir,
        port=int(a.port),
        metrics_address=a.metrics_address,
        rate=float(a.rate),
        log_level=a.log_level,
    ).run(duration=float(a.duration) if a.duration is not None else None)


def cmd_report(a: argparse.Namespace) -> int:
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


def cmd_evaluate(a: argparse.Namespace) -> int:
    from stream_trainer.evaluation import evaluate as ev

    say = (lambda msg: print(f"evaluate: {msg}", file=sys.stderr)) if not a.quiet else None
    if a.drift_suite:
        from stream_trainer.evaluation import drift_suite

        n = a.events or 400_000
        suite = drift_suite.run(
            n,
            {"clicks": n * 5 // 2, "ticks": n * 3 // 4, "sensors": n * 3 // 4},
            seed=a.seed,
            progress=say,
        )
        print(json.dumps(suite, indent=1) if a.json else drift_suite.markdown(suite))
        return 0
    if a.kind is None:
        raise StreamTrainerError("evaluate needs --kind clicks|ticks|sensors (or --drift-suite)")
    if a.replay_study:
        if a.kind != "clicks" or a.input:
            raise StreamTrainerError("--replay-study uses its own click stream (--kind clicks)")
        study = ev.replay_study(
            ev.recurring_clicks(a.events or 300_000, seed=a.seed), config=a.config, progress=say
        )
        print(json.dumps(study, indent=1) if a.json else ev.replay_markdown(study))
        return 0
    if a.input:
        stream = ev.from_file(a.kind, a.input, limit=a.events)
    else:
        drift_at = a.drift_at if a.drift_at is not None else (a.events or 0) // 2 or None
        stream = ev.generated(a.kind, a.events or 100_000, seed=a.seed, drift_at=drift_at)
    if not stream.raw:
        raise StreamTrainerError(f"no events in {stream.source}")
    if a.adaptation:
        result = ev.adaptation(stream, config=a.config, progress=say)
        print(json.dumps(result, indent=1) if a.json else ev.adaptation_markdown(result))
        return 0
    report = ev.evaluate(
        stream, config=a.config, vw=not a.no_vw, trees=not a.no_trees, progress=say
    )
    print(json.dumps(report, indent=1) if a.json else ev.markdown(report))
    return 0


COMMANDS = {
    "broker": cmd_broker,
    "produce": cmd_produce,
    "run": cmd_run,
    "check-config": cmd_check_config,
    "demo": cmd_demo,
    "report": cmd_report,
    "evaluate": cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except StreamTrainerError as err:
        print(f"stream-trainer {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
