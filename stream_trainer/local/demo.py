"""``stream-trainer demo`` (``make run``): broker, topics, producers, daemon, live summary
(a table refreshed in place on a terminal, lines when piped: :mod:`.view`).

Four pipelines: clicks, ticks and sensors with their labels inline, and ``recs``, the
click stream's hidden truth as impressions whose clicks come later (delayed labels,
joined in the daemon). The daemon serves ``POST /predict/<pipeline>`` (clicks, recs)
with the weights it is training.

Each run continues the model learned by the runs before it in the same directory (its
checkpoints) on fresh events: the broker is in memory and starts empty, and the
producers send the next stream of the same hidden truth (``produce --stream``), never
the bytes of an earlier run again. ``rm -rf .demo`` starts over.

Every process it starts runs in its own session and dies with the demo; on Ctrl-C
(or after ``--duration``) they are stopped in order: producers, the daemon (final
checkpoint), then the broker.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stream_trainer.edges.admin import create_topics
from stream_trainer.errors import StreamTrainerError
from stream_trainer.local import procs
from stream_trainer.local.broker import LocalBroker, free_port, port_in_use
from stream_trainer.local.view import Summary, open_view
from stream_trainer.metrics.scrape import scrape

CONFIG = Path(__file__).parent.parent / "configs" / "demo.yaml"
SERVED = "recs"  # the pipeline of the curl line the demo prints
START_WAIT_S = 60.0  # how long past --duration the demo waits for the daemon to answer
EXAMPLE = '{"ts": 1767225600, "user_id": "u1", "item_id": "i7", "context": {"device": "mobile"}}'


@dataclass(frozen=True)
class Stream:
    """One producer of the demo: ``produce KIND --topic TOPIC`` at ``share`` of --rate."""

    kind: str
    topic: str
    seed: int
    drift_every: int  # events
    share: float = 1.0
    extra: tuple[str, ...] = ()


STREAMS = (
    Stream("clicks", "clicks", 1, 60_000),
    Stream("ticks", "ticks", 2, 40_000),
    Stream("sensors", "sensors", 3, 30_000),
    # recs: the same truth as clicks, as impressions, and each click's label on
    # impressions.labels 1-30 s later (event time: 20 events a second). At a fifth of
    # --rate (200/s by default) the 30 s window ends ~3 s after an impression.
    Stream("clicks", "impressions", 1, 60_000, 0.2, ("--delayed-labels", "--max-delay", "30")),
)


class Demo:
    def __init__(
        self,
        workdir: str = ".demo",
        port: int = 9092,
        metrics_address: str = "127.0.0.1:9108",
        rate: float = 1000.0,
        log_level: str = "info",
        serving_address: str = "127.0.0.1:9109",
    ) -> None:
        self.workdir = Path(workdir)
        self.port, self.metrics_address, self.rate = port, metrics_address, rate
        self.serving_address = serving_address
        self.log_level = log_level
        self.stop = threading.Event()
        self.children: list[subprocess.Popen[bytes]] = []

    def _say(self, msg: str) -> None:
        print(msg, flush=True)

    def run(self, duration: float | None = None) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        self.workdir.mkdir(parents=True, exist_ok=True)
        host, _, mport = self.metrics_address.rpartition(":")
        if port_in_use(host, int(mport)):
            raise StreamTrainerError(
                f"metrics address {self.metrics_address} is in use; pass "
                "--metrics-address HOST:PORT (or stop the other daemon)"
            )
        port = self.port
        if port == 0:
            port = free_port()
        elif port_in_use("127.0.0.1", port):
            port = free_port()
            self._say(f"port {self.port} is taken; the demo broker uses {port} instead")
        host, _, sport = self.serving_address.rpartition(":")
        if self.serving_address == self.metrics_address or port_in_use(host, int(sport)):
            self.serving_address = f"{host}:{free_port(host)}"
            self._say(f"{host}:{sport} is taken; the demo serves on {self.serving_address}")
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        broker = LocalBroker(port=port, log=open(logs / "broker.log", "wb"))  # noqa: SIM115
        try:
            broker.start()
            self._say(f"broker      {broker.bootstrap} (Tansu, in memory)")
            self._run(broker, duration, logs)
        finally:
            self._shutdown(broker)
        return 0

    def _next_run(self) -> int:
        """This run's number in the work directory (1 for the first): it picks the
        producers' stream, so no run replays an earlier run's events."""
        counter = self.workdir / "runs"
        try:
            run = int(counter.read_text().strip() or 0) + 1
        except (OSError, ValueError):
            run = 1
        counter.write_text(f"{run}\n")
        return run

    def _run(self, broker: LocalBroker, duration: float | None, logs: Path) -> None:
        run = self._next_run()
        checkpoints = self.workdir / "checkpoints"
        resumes = checkpoints.is_dir() and any(checkpoints.glob("*/ckpt-*.pt"))
        config = self._config(broker.bootstrap, checkpoints)
        create_topics(broker.bootstrap, topics(config))
        cfg_path = self.workdir / "pipelines.yaml"
        cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
        daemon_log = open(logs / "daemon.log", "wb")  # noqa: SIM115
        self.daemon = procs.spawn(
            procs.python_module("run", "--config", str(cfg_path), "--log-level", self.log_level),
            stdout=daemon_log,
            stderr=daemon_log,
        )
        self.children.append(self.daemon)
        for stream in STREAMS:
            self.children.append(self._producer(broker.bootstrap, stream, run, logs))
        url = f"http://{self.metrics_address}/metrics"
        self._say(
            f"producers   clicks, ticks, sensors at {self.rate:g} events/s each, "
            "drift injected periodically;"
        )
        self._say(
            f"            impressions at {self.rate * STREAMS[-1].share:g}/s, their clicks "
            "up to 30 s later (recs: delayed labels)"
        )
        self._say(f"daemon      config {cfg_path}, logs in {logs}/")
        self._say(
            f"model       run {run}: continues the model of earlier runs ({checkpoints}/) on "
            f"fresh events; rm -rf {self.workdir} to start over"
            if resumes
            else f"model       run {run}: a fresh model, checkpointed in {checkpoints}/"
        )
        self._say(f"metrics     {url}  (also /healthz, /readyz)")
        self._say(f"predict     curl -s http://{self.serving_address}/predict/{SERVED} \\")
        self._say(f"              -d '{EXAMPLE}'")
        self._say("Ctrl-C to stop\n")
        self._summary_loop(url, duration)

    def _config(self, bootstrap: str, checkpoints: Path) -> dict[str, Any]:
        """The demo's config (the packaged one, pointed at this run's broker, addresses
        and files)."""
        config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
        config["kafka"]["bootstrap_servers"] = bootstrap
        config["metrics"]["address"] = self.metrics_address
        config["serving"]["address"] = self.serving_address
        config["checkpoint"]["dir"] = str(checkpoints.resolve())
        config["history"] = {
            "path": str((self.workdir / "history.jsonl").resolve()),
            "every_seconds": 2.0,
        }
        return config

    def _producer(self, bootstrap: str, s: Stream, run: int, logs: Path) -> subprocess.Popen[bytes]:
        """One topic's producer: this run's stream of the seed (never an earlier run's)."""
        log = open(logs / f"produce-{s.topic}.log", "wb")  # noqa: SIM115
        args = [s.kind, "--topic", s.topic, "--bootstrap-servers", bootstrap,
                "--rate", str(self.rate * s.share), "--seed", str(s.seed),
                "--stream", str(run - 1), "--drift-every", str(s.drift_every),
                "--quiet", "--linger-ms", "50", *s.extra]  # fmt: skip
        # (--linger-ms: fewer, larger batches: the in-memory broker lasts longer)
        return procs.spawn(procs.python_module("produce", *args), stdout=log, stderr=log)

    def _summary_loop(self, url: str, duration: float | None) -> None:
        """Scrape the daemon every 2 s into the view (a live table, or lines when piped)."""
        # --duration counts from the daemon's first answer (a busy machine can take many
        # seconds to start it: counted from the spawn, a short run could end before the
        # pipelines had trained); a daemon that never answers ends the run all the same
        t_end = None if duration is None else time.monotonic() + duration + START_WAIT_S
        answered = False
        summary = Summary(log_hint=f"{self.workdir}/logs/daemon.log")
        view = open_view(self._say)
        view.waiting("waiting for the daemon's first metrics ...")
        try:
            while True:
                time.sleep(2.0)  # the main thread polls; never stop.wait() (see service.py)
                if self.stop.is_set():
                    break
                if self.daemon.poll() is not None:
                    raise StreamTrainerError(
                        f"the daemon exited (code {self.daemon.returncode}); "
                        f"see {self.workdir}/logs/daemon.log"
                    )
                now = time.monotonic()
                try:
                    s = scrape(url)
                except OSError:
                    s = None  # the daemon is still starting (or not reachable there)
                if s is not None:
                    if not answered and duration is not None:
                        t_end = now + duration
                    answered = True
                    view.show(*summary.update(s, now))
                if t_end is not None and now >= t_end:  # scraped or not: --duration ends it
                    break
        finally:
            view.close()

    def _shutdown(self, broker: LocalBroker) -> None:
        self._say("\nstopping: producers, daemon (final checkpoint), broker")
        daemon = getattr(self, "daemon", None)
        for child in self.children:
            if child is not daemon:
                procs.stop(child, timeout_s=5)
        code = procs.stop(daemon, timeout_s=30) if daemon is not None else 0
        broker.stop()
        if code not in (0, None):
            print(
                f"the daemon exited with code {code}; see {self.workdir}/logs/daemon.log",
                file=sys.stderr,
            )
        self._say("stopped")
        if (self.workdir / "history.jsonl").exists():
            self._say(
                f"loss over time: stream-trainer report --history "
                f"{self.workdir / 'history.jsonl'} --out loss.png"
            )


def topics(config: dict[str, Any], partitions: int = 2) -> dict[str, int]:
    """The topics the demo's producers write: every pipeline's input and labels topics
    (the daemon creates the rest: dead letters, outputs).

    >>> topics({"pipelines": [{"topics": ["clicks"]},
    ...                       {"topics": ["imp"], "labels": {"topic": "imp.labels"}}]})
    {'clicks': 2, 'imp': 2, 'imp.labels': 2}
    """
    out: dict[str, int] = {}
    for p in config["pipelines"]:
        for t in [*p["topics"], *([p["labels"]["topic"]] if p.get("labels") else [])]:
            out[t] = partitions
    return out
