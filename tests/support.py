"""Helpers for the integration tests: real broker, daemon subprocess, metrics, topics."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_trainer.checkpoint.summary import ledger_ranges  # noqa: F401 (the tests' helper)
from stream_trainer.metrics.scrape import Samples, sample
from stream_trainer.metrics.scrape import scrape as scrape_url
from stream_trainer.producers.publish import publish

REPO = Path(__file__).resolve().parents[1]


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes | dict[str, Any]],
    key_field: str | None = None,
) -> int:
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_request_size=8 << 20
    )
    n = 0
    for v in values:
        key = None
        if isinstance(v, dict):
            key = str(v[key_field]).encode() if key_field else None
            v = json.dumps(v).encode()
        producer.send(topic, value=v, key=key)
        n += 1
    producer.flush()
    producer.close()
    return n


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[Any]:
    """Read a topic from the beginning (no group) until ``expected`` records arrive."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        consumer_timeout_ms=1000,
    )
    deadline = time.monotonic() + timeout_s
    parts = None
    while parts is None and time.monotonic() < deadline:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            parts = None
            time.sleep(0.2)
    assert parts, f"topic {topic} does not exist"
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    out: list[Any] = []
    while len(out) < expected and time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200).values():
            out.extend(recs)
    consumer.close()
    return out


def scrape(address: str) -> Samples:
    return scrape_url(f"http://{address}/metrics")


# the daemon's line once its metrics server is bound (replicas: with their local rank)
SERVING_METRICS = re.compile(r"serving metrics url=http://(\S+)/metrics(.*)")
LOCAL_RANK = re.compile(r"\blocal_rank=(\d+)")
STOPPED = re.compile(r": stopped exit_code=(-?\d+)")


class Daemon:
    """``stream-trainer run`` as a subprocess, with its metrics address. ``metrics_port``
    0: the daemon binds a free port and logs it (:meth:`address_of` reads it), so no
    port is picked here that something else may take before the daemon binds it.
    ``own_group``: in a process group of its own (so that a test can signal the group)."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        metrics_port: int = 0,
        env: dict[str, str] | None = None,
        *,
        own_group: bool = False,
    ) -> None:
        self.extra_env = env or {}
        self.metrics_port = metrics_port
        self.own_group = own_group
        config = {**config, "metrics": {"address": f"127.0.0.1:{metrics_port}"}}
        self.config_path = workdir / "pipelines.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"daemon-{int(time.time() * 1000)}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        log = open(self.log_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream_trainer", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=self.own_group,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def address_of(self, local_rank: int = 0) -> str:
        """The metrics address (of the ``local_rank``-th replica): the configured port
        (+ the local rank), or with port 0 the one its newest process logged (OSError
        until it has)."""
        if self.metrics_port:
            return f"127.0.0.1:{self.metrics_port + local_rank}"
        bound = {}
        for m in SERVING_METRICS.finditer(self.log()):
            rank = LOCAL_RANK.search(m.group(2))
            bound[int(rank.group(1)) if rank else 0] = m.group(1)
        if local_rank not in bound:
            raise ConnectionRefusedError(f"replica {local_rank} serves no metrics yet")
        return bound[local_rank]

    @property
    def address(self) -> str:
        return self.address_of(0)

    def metrics(self) -> dict:
        return scrape(self.address)

    def wait_for(
        self, predicate: Callable[[dict], bool], timeout_s: float = 120.0, what: str = "condition"
    ) -> dict:
        deadline = time.monotonic() + timeout_s
        last: dict = {}
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) waiting for "
                    f"{what}:\n{self.log()[-3000:]}"
                )
            try:
                last = self.metrics()
                if predicate(last):
                    return last
            except OSError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")

    def wait_assigned(self, pipeline: str, partitions: int) -> dict:
        """Until the pipeline's consumer holds ``partitions`` partitions."""
        return self.wait_for(
            lambda m: (
                (sample(m, "stream_trainer_assigned_partitions", pipeline=pipeline) or 0)
                == partitions
            ),
            what=f"{pipeline}: {partitions} partitions assigned",
        )

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, and the exit code, asserted 0 (a graceful stop) with the log if not."""
        self.send_stop()
        return self.wait_stopped(timeout_s)

    def send_stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def _exit_code(self, timeout_s: float, who: str) -> int:
        """The process's exit code; killed, and the log shown, if it runs past the time."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{who} did not stop on SIGTERM:\n{self.log()[-5000:]}") from None

    def wait_stopped(self, timeout_s: float = 60.0) -> int:
        code = self._exit_code(timeout_s, "daemon")
        assert code == 0, f"daemon exited {code} on SIGTERM:\n{self.log()[-5000:]}"
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_group_prefix() -> str:
    """Consumer groups of the running test's own (stable across its daemons and restarts):
    every test's daemons would otherwise share ``stream-trainer.<pipeline>`` on their
    xdist worker's broker, and members that an earlier test killed stay in that group
    until their session times out: a new daemon then joined with no partitions (seen in
    a loaded run: ``partitions assigned partitions=``) or waited out the rebalance."""
    test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0]
    return f"st-{zlib.crc32(test.encode()):08x}" if test else "stream-trainer"


def base_config(
    bootstrap: str, checkpoint_dir: Path, pipelines: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap, "group_prefix": test_group_prefix()},
        "device": "cpu",
        "checkpoint": {"dir": str(checkpoint_dir), "every_seconds": 2.0},
        "pipelines": pipelines,
        **extra,
    }


class Trickle(threading.Thread):
    """``publish`` ``events`` at about ``rate`` events/s in the background."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: list[dict[str, Any]],
        key_field: str,
        rate: float = 5000.0,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.key_field, self.rate = key_field, rate
        self.sent = 0

    def run(self) -> None:
        self.sent = publish(
            self.bootstrap,
            self.topic,
            self.events,
            key_field=self.key_field,
            rate=self.rate,
            total=len(self.events),
            progress=False,
        )


def newest_checkpoint(root: Path, pipeline: str) -> dict[str, Any]:
    import torch

    path = sorted((root / pipeline).glob("ckpt-*.pt"))[-1]
    return torch.load(path, weights_only=True)


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; HTTP errors are answers too, connection errors are (0, why)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


class Torchrun(Daemon):
    """``torchrun ... -m stream_trainer run``: ``nproc`` replicas on one agent, standalone,
    or one agent of an elastic group (``rdzv``: the c10d rendezvous endpoint). Each
    replica binds a free metrics port of its own (:meth:`address_of`: a replica torchrun
    restarted binds another)."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        metrics_port: int = 0,
        *,
        nproc: int = 1,
        rdzv: str | None = None,
        nnodes: str = "1:2",
        max_restarts: int = 3,
        name: str = "a",
    ) -> None:
        (workdir / name).mkdir(exist_ok=True)
        super().__init__(config, workdir / name, metrics_port)
        self.nproc, self.rdzv, self.nnodes, self.max_restarts = nproc, rdzv, nnodes, max_restarts
        self._stop_from = 0  # the log's length when SIGTERM was sent

    def addresses(self, timeout_s: float = 120.0) -> list[str]:
        """Every replica's metrics address, once each serves (their newest processes')."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return [self.address_of(r) for r in range(self.nproc)]
            except OSError:
                if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                    raise AssertionError(
                        f"not every replica serves metrics:\n{self.log()[-5000:]}"
                    ) from None
                time.sleep(0.2)

    def send_stop(self) -> None:
        """SIGTERM to the agent (it signals each replica's process group)."""
        self._stop_from = len(self.log())
        super().send_stop()

    def wait_stopped(self, timeout_s: float = 60.0) -> int:
        """Until the agent exits; asserts that every replica logged a clean stop (exit 0):
        the agent's own code is that of its SignalException (1), whatever they did."""
        code = self._exit_code(timeout_s, "torchrun")
        since = self.log()[self._stop_from :]
        codes = [int(c) for c in STOPPED.findall(since)]
        assert codes == [0] * self.nproc, (
            f"replicas' exit codes after SIGTERM: {codes} (torchrun {code}), expected "
            f"{self.nproc} x 0:\n{since[-5000:]}"
        )
        return 0

    def start(self) -> Torchrun:
        log = open(self.log_path, "wb")  # noqa: SIM115
        launch = (
            ["--standalone", "--nnodes", "1"]
            if self.rdzv is None
            else [
                "--nnodes",
                self.nnodes,
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                self.rdzv,
                "--rdzv-id",
                "stream-trainer-test",
                "--rdzv-conf",
                "join_timeout=60,last_call_timeout=1,close_timeout=5",
            ]
        )
        cmd = [sys.executable, "-m", "torch.distributed.run", *launch,
               "--nproc-per-node", str(self.nproc), "--max-restarts", str(self.max_restarts),
               "--monitor-interval", "1",
               "-m", "stream_trainer", "run", "--config", str(self.config_path)]  # fmt: skip
        # torch 2.13's agents hang re-rendezvousing on the shared TCP store (a group that
        # changes members); the launch commands of docs/how-to/scaling-out.md set this too
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True
        )
        return self

    def kill(self) -> None:
        """SIGKILL the agent and its workers at once (a crashed machine). The workers
        run in sessions of their own, so they are found by their parent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                fields = dict(
                    line.split(":\t", 1)
                    for line in status.read_text().splitlines()
                    if ":\t" in line
                )
            except OSError:
                continue
            if fields.get("PPid", "").strip() == str(self.proc.pid):
                workers.append(int(status.parent.name))
        for pid in [self.proc.pid, *workers]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
