"""The daemon: one thread per pipeline, a metrics server, signals, graceful stop.

Signal handlers only set the stop flag; each pipeline then flushes, writes a final
checkpoint and commits. A second SIGINT/SIGTERM exits at once (code 130).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from contextlib import ExitStack
from types import FrameType

import torch
from prometheus_client import CollectorRegistry

from stream_trainer import distributed
from stream_trainer.config import Settings
from stream_trainer.edges import KafkaSink, KafkaSource
from stream_trainer.edges.admin import broker_answers, check_reachable, create_topics
from stream_trainer.edges.ingest import IngestSource, worker_count
from stream_trainer.edges.tls import client_security
from stream_trainer.errors import StreamTrainerError
from stream_trainer.learner import pick_device
from stream_trainer.metrics import Metrics, MetricsServer
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.offsets import fmt_offsets
from stream_trainer.pipeline.replicated import ReplicatedPipeline
from stream_trainer.pipeline.runner import Runner
from stream_trainer.pipeline.sharded import ShardedPipeline
from stream_trainer.pipeline_config import PipelineSettings
from stream_trainer.serving.setup import Serving
from stream_trainer.stopping import StopRequest

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
# The main thread never blocks in stop.wait(): the signal handler calls stop.set(), which
# takes the Event's lock, and deadlocks if it interrupts this same thread while it holds
# that lock inside wait(). So the main thread sleeps and polls stop.is_set() instead.
MAIN_THREAD_POLL_S = 0.2
PROBE_EVERY_S = 1.0
PROBE_TIMEOUT_S = 2.0
BROKER_DOWN_AFTER_S = 3.0
EXIT_STALLED = 3  # a replica stalled or left without a word: torchrun restarts the group
EXIT_REGROUP = 75  # a replica left cleanly: torchrun restarts this one to regroup


class Service:
    def __init__(
        self,
        settings: Settings,
        registry: CollectorRegistry | None = None,
        *,
        ignore_checkpoint_offsets: bool = False,
    ) -> None:
        self.settings = settings
        self.ignore_checkpoint_offsets = ignore_checkpoint_offsets
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.stop = threading.Event()
        try:
            # replicas on one machine: each its own GPU (its torchrun local rank)
            self.device = pick_device(settings.device, distributed.World.from_env().local_rank)
        except ValueError as err:
            raise StreamTrainerError(str(err)) from None
        torch.set_num_threads(settings.torch_threads)
        # replicas under torchrun: every process is a rank of one process group and a
        # member of each pipeline's consumer group (see distributed.py)
        self.world, self.heartbeat = distributed.init_world(self.device, settings.stall_timeout_s)
        self.metrics.replica.labels(str(self.world.rank), str(self.world.size)).set(1)
        self.replicated: list[ReplicatedPipeline] = []  # in config order on every rank
        self.pipelines: list[Runner] = [self._runner(spec) for spec in settings.pipelines]
        self.security, self.tls = client_security(settings.kafka)  # reads secrets: fail early
        if ignore_checkpoint_offsets:
            self._check_ignore_offsets()
        self.serving = Serving(settings, self.pipelines, self.registry)  # /predict, requests
        self.broker_ok_at = -1e18
        self.threads: list[threading.Thread] = []
        self.server: MetricsServer | None = None
        self._signals = 0
        self.stalled = False

    def _check_ignore_offsets(self) -> None:
        if self.settings.source.position == "committed":
            raise StreamTrainerError(
                "--ignore-checkpoint-offsets needs a start position: --from earliest, "
                "latest or a time (or source.start_from in the config)"
            )
        if self.world.replicated or any(
            p.partitioning == "by_key" for p in self.settings.pipelines
        ):
            raise StreamTrainerError(
                "--ignore-checkpoint-offsets works for one process and shared models; with "
                "replicas or partitioning: by_key, move the checkpoint directory away instead"
            )

    def _restore(self, p: Runner) -> None:
        """Load the newest checkpoint; with --ignore-checkpoint-offsets, keep its model
        but read from source.start_from, and say so."""
        if not p.restore() or not self.ignore_checkpoint_offsets:
            return
        assert isinstance(p, Pipeline)
        log.warning(
            "ignoring the checkpoint's offsets (--ignore-checkpoint-offsets): the restored "
            "model reads from source.start_from, not from where it stopped",
            extra={"pipeline": p.name, "start_from": self.settings.source.start_from,
                   "checkpoint_offsets": fmt_offsets(p.offsets.next)},
        )  # fmt: skip
        p.forget_offsets()

    def _runner(self, spec: PipelineSettings) -> Runner:
        hooks = self.metrics.pipeline(spec.name, spec.drift.detector)
        if spec.partitioning == "by_key":  # a model per key, sharded with the partitions
            return ShardedPipeline(self.settings, spec, device=self.device, hooks=hooks)
        if self.world.replicated:  # one model shared by the replicas
            p = ReplicatedPipeline(self.settings, spec, device=self.device, hooks=hooks)
            self.replicated.append(p)
            return p
        return Pipeline(self.settings, spec, device=self.device, hooks=hooks)

    # ---- health ------------------------------------------------------------------------
    def healthy(self) -> tuple[bool, str]:
        bad = [f"{p.name}: {p.failed}" for p in self.pipelines if p.failed]
        bad += [
            f"{t.name}: thread exited"
            for t in self.threads
            if not t.is_alive() and not self.stop.is_set()
        ]
        return (not bad), "; ".join(bad)

    def broker_up(self) -> bool:
        return time.monotonic() - self.broker_ok_at <= BROKER_DOWN_AFTER_S

    def ready(self) -> tuple[bool, str]:
        states = [p.ready() for p in self.pipelines]
        if not self.broker_up():
            states.append((False, f"broker {self.settings.kafka.bootstrap_servers} not answering"))
        why = "; ".join(msg for ok, msg in states if not ok)
        return all(ok for ok, _ in states), why

    def _probe_broker(self) -> None:
        """Ask the broker for ApiVersions every second: /readyz and broker_up follow it."""
        was_up = True
        while not self.stop.is_set():
            if broker_answers(self.settings.kafka.bootstrap_servers, PROBE_TIMEOUT_S, self.tls):
                self.broker_ok_at = time.monotonic()
            up = self.broker_up()
            self.metrics.broker_up.set(1 if up else 0)
            if up != was_up:
                if up:
                    log.info("broker reachable again")
                else:
                    log.warning("broker unreachable: not ready until it answers")
                was_up = up
            self.stop.wait(PROBE_EVERY_S)

    # ---- lifecycle ---------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now without a final checkpoint")
            os._exit(130)
        log.info(
            "stopping: final checkpoint and commit", extra={"signal": signal.Signals(signum).name}
        )
        self.stop.set()

    def _write_history(self) -> None:
        """Append one JSON line per pipeline every ``history.every_seconds``."""
        h = self.settings.history
        assert h.path is not None
        h.path.parent.mkdir(parents=True, exist_ok=True)
        with open(h.path, "a", buffering=1) as fh:
            while not self.stop.wait(h.every_seconds):
                now = round(time.time(), 3)
                for p in self.pipelines:
                    doc = {"ts": now, "pipeline": p.name, **p.summary()}
                    nan_free = {k: None if v != v else v for k, v in doc.items()}  # NaN -> null
                    fh.write(json.dumps(nan_free) + "\n")

    def install_signal_handlers(self, early: StopRequest | None = None) -> None:
        """SIGTERM and SIGINT stop the service; ``early``: the entry point's handler,
        whose signal, if one came during the start-up, starts the stop now."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if early is not None and early.signum is not None:
            self._on_signal(early.signum, None)

    def _run_pipeline(self, p: Runner) -> None:
        k = self.settings.kafka
        if self.device.type == "cuda":  # the current device is per thread: cuda:0 at start
            torch.cuda.set_device(self.device)
        try:
            with ExitStack() as stack:
                sink = KafkaSink(
                    k.bootstrap_servers, client_id=f"stream-trainer-{p.name}", **self.security
                )
                stack.callback(sink.close)
                source: KafkaSource | IngestSource = KafkaSource(
                    k,
                    p.spec.input_topics,
                    f"{k.group_prefix}.{p.name}",
                    resume_from=p.resume_offsets,
                    on_revoke=p.on_revoke,
                    on_assign=p.on_assign,
                    restored=lambda: p.restored,
                    client_id=f"stream-trainer-{p.name}-{self.world.rank}",
                    security=self.security,
                    start=self.settings.source,
                    pipeline=p.name,
                )
                stack.callback(source.close)
                workers = self._ingest_workers(p)
                if workers:
                    assert isinstance(p, Pipeline)  # (_ingest_workers)
                    source = IngestSource(
                        source,
                        k,
                        workers,
                        group_id=f"{k.group_prefix}.{p.name}",
                        client_id=f"stream-trainer-{p.name}-{self.world.rank}-ingest",
                        security=self.security,
                        decoder_spec=p.decoder_spec,
                        positions=lambda: p.polled_next,
                        name=p.name,
                        featurizer_spec=getattr(p, "worker_featurizer", None),
                        stopping=self.stop.is_set,
                    )
                    stack.callback(source.close)
                p.run(source, sink, self.stop)
        except distributed.ReplicaStalled as err:
            p.failed = str(err)
            self.stalled = True
            log.error("replicas out of step", extra={"pipeline": p.name, "error": str(err)})
            self.stop.set()
        except StreamTrainerError as err:
            p.failed = str(err)
            log.error("pipeline stopped", extra={"pipeline": p.name, "error": str(err)})
        except Exception as err:  # a bug: report it loudly, keep other pipelines going
            p.failed = f"{type(err).__name__}: {err}"
            log.exception("pipeline crashed", extra={"pipeline": p.name})

    def _ingest_workers(self, p: Runner) -> int:
        """Ingest worker processes for ``p``: plain and replicated pipelines (a by_key
        pipeline's shards keep fetching in their own process); ``auto`` shares the cores
        out over the pipelines and the replicas on this machine."""
        if not isinstance(p, Pipeline) or p.spec.labels is not None:  # the joiner reads raw
            return 0
        fed = sum(isinstance(q, Pipeline) for q in self.pipelines)  # each may have workers
        return worker_count(self.settings.ingest.workers, fed * self.world.local_size)

    def _serving_ports(self, spec: PipelineSettings) -> tuple[KafkaSource, KafkaSink]:
        """A consumer (a group of its own) and a producer for a pipeline's requests topic."""
        k, name = self.settings.kafka, spec.name
        assert spec.requests_topic is not None
        sink = KafkaSink(
            k.bootstrap_servers, client_id=f"stream-trainer-{name}-serving", **self.security
        )
        source = KafkaSource(
            k, [spec.requests_topic], f"{k.group_prefix}.{name}.serving",
            resume_from=lambda tps: {}, client_id=f"stream-trainer-{name}-serving",
            security=self.security,
        )  # fmt: skip
        return source, sink

    def ensure_topics(self) -> None:
        """Create missing input, dead-letter and output topics (fails early if unreachable)."""
        wanted: dict[str, int] = {}
        for p in self.pipelines:
            for t in p.spec.topics:
                wanted[t] = self.settings.kafka.default_partitions
            wanted[p.spec.dlq_topic] = 1
            if p.output:
                wanted[p.output] = self.settings.kafka.default_partitions
            for topic in (
                p.spec.requests_topic,
                p.spec.serving_output,
                p.spec.labels.topic if p.spec.labels else None,
            ):
                if topic:
                    wanted[topic] = self.settings.kafka.default_partitions
        created = create_topics(self.settings.kafka.bootstrap_servers, wanted, **self.security)
        if created:
            log.info("created topics", extra={"topics": ",".join(created)})

    def run(self) -> int:
        """Run until stopped; 0 on a clean stop, 1 when a pipeline failed."""
        if self.stop.is_set() and not self.world.replicated:
            # stopped during the start-up: nothing learned, nothing to checkpoint (replicas
            # go through the rounds: every rank stops in the same one)
            log.info("stopped before the pipelines started")
            return 0
        with ExitStack() as stack:
            for p in self.pipelines:
                self._restore(p)
            self.serving.publish_restored()
            self._join_replicas()
            check_reachable(self.settings.kafka.bootstrap_servers)
            self.broker_ok_at = time.monotonic()
            probe = threading.Thread(target=self._probe_broker, name="broker-probe", daemon=True)
            probe.start()
            if self.settings.history.path is not None and self.world.rank == 0:
                threading.Thread(target=self._write_history, name="history", daemon=True).start()
            if self.settings.kafka.create_topics:
                self.ensure_topics()
            self.server = MetricsServer(
                self._metrics_address(), self.registry, self.healthy, self.ready
            ).start()
            stack.callback(self.server.stop)
            self.serving.start(self.stop, self._serving_ports)
            stack.callback(self.serving.stop)
            log.info(
                "serving metrics",
                extra={
                    "url": f"http://{self.server.address}/metrics",
                    "device": str(self.device),
                    "pipelines": ",".join(p.name for p in self.pipelines),
                    # replicas: which one (with port 0, each serves on a port of its own)
                    **(
                        {"rank": self.world.rank, "local_rank": self.world.local_rank}
                        if self.world.replicated
                        else {}
                    ),
                },
            )
            # Everything built so far (torch, models, clients) lives as long as the daemon:
            # out of the collector's sight, a full collection no longer walks it while
            # training waits (a latency spike each time).
            gc.collect()
            gc.freeze()
            if not self._run_threads():
                return 1
        return self._exit_code()

    def _join_replicas(self) -> None:
        for p in self.replicated:  # the same order on every rank
            p.attach(
                distributed.Replicas(
                    self.world,
                    p.name,
                    self.device,
                    stall_timeout_s=self.settings.stall_timeout_s,
                    heartbeat=self.heartbeat,
                    on_stall=p.hooks.on_stall,
                    on_sync=p.hooks.on_sync,
                )
            )

    def _run_threads(self) -> bool:
        """A thread per pipeline until stopped (or all ended); False if one did not stop
        within the grace period."""
        for p in self.pipelines:
            t = threading.Thread(
                target=self._run_pipeline, args=(p,), name=f"pipeline-{p.name}", daemon=True
            )
            self.threads.append(t)
            t.start()
        while not self.stop.is_set() and any(t.is_alive() for t in self.threads):
            time.sleep(MAIN_THREAD_POLL_S)
        self.stop.set()
        deadline = time.monotonic() + STOP_GRACE_S
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            log.error("pipelines did not stop in time", extra={"threads": ",".join(stuck)})
        return not stuck

    def _exit_code(self) -> int:
        if self.stalled:
            return EXIT_STALLED
        if any(p.failed for p in self.pipelines):
            return 1
        if any(p.regroup for p in self.pipelines):
            log.warning(
                "a replica left the group: exiting so that torchrun restarts this one "
                "with the replicas that remain",
                extra={"rank": self.world.rank},
            )
            return EXIT_REGROUP
        return 0

    def _metrics_address(self) -> str:
        """Replicas on one machine: each on the configured port + its local rank."""
        address = self.settings.metrics.address
        host, _, port = address.rpartition(":")
        if self.world.replicated and int(port):
            return f"{host}:{int(port) + self.world.local_rank}"
        return address
