"""Helpers for the integration tests: real broker, daemon subprocess, metrics, topics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

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


class Daemon:
    """``stream-trainer run`` as a subprocess, with its metrics address."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        metrics_port: int,
        env: dict[str, str] | None = None,
    ) -> None:
        self.extra_env = env or {}
        self.address = f"127.0.0.1:{metrics_port}"
        config = {**config, "metrics": {"address": self.address}}
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
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

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

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop on SIGTERM:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def base_config(
    bootstrap: str, checkpoint_dir: Path, pipelines: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return {
        "kafka": {"bootstrap_servers": bootstrap},
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


def ledger_ranges(state: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for key, flat in state["ledger"]["ranges"].items():
        v = flat.tolist()
        out[key] = list(zip(v[0::2], v[1::2], strict=True))
    return out


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
    or one agent of an elastic group (``rdzv``: the c10d rendezvous endpoint)."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        metrics_port: int,
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

    def addresses(self) -> list[str]:
        host, _, port = self.address.rpartition(":")
        return [f"{host}:{int(port) + r}" for r in range(self.nproc)]

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
        # changes members); the README's launch commands set this too
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
