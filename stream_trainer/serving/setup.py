"""Serving for a daemon's pipelines, built from the settings: a publisher per served
pipeline (hooked into its trainer), ``POST /predict`` and the requests-topic threads."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from stream_trainer.config import Settings
from stream_trainer.metrics.serving import ServingMetrics
from stream_trainer.pipeline.ports import Sink, Source
from stream_trainer.pipeline_config import PipelineSettings
from stream_trainer.serving.http import PredictServer, read_token
from stream_trainer.serving.process import ServingProcess
from stream_trainer.serving.requests import serve_requests
from stream_trainer.serving.scorer import Scorer, serveable
from stream_trainer.serving.snapshot import Publisher

log = logging.getLogger(__name__)

# How long a thread that wants the GIL waits before the holder must let go (Python's
# default is 5 ms). A request thread takes the GIL several times per request (read,
# parse, forward, write) while the trainer thread steps: at 5 ms a wait, a one-event
# request's tail is the trainer's, not its own. 0.5 ms bounds each wait (a long C call,
# a backward, still holds it to its end). make bench-serving, one run each at 5k
# events/s: one-event p99 20.6 -> 15.1 ms, p50 2.1 -> 1.6 ms; training kept up in both.
SWITCH_INTERVAL_S = 0.0005


class Serving:
    def __init__(
        self, settings: Settings, pipelines: Sequence[Any], registry: CollectorRegistry
    ) -> None:
        s = settings.serving
        self.settings = settings
        self.metrics = ServingMetrics(registry)
        self.token = read_token(s.token_file)  # a missing file: an error before anything starts
        self.scorers: dict[str, Scorer] = {}
        self.pipelines: dict[str, Any] = {}
        own_process = s.address is not None and s.process  # /predict in a serving process
        for p in pipelines:
            if getattr(p, "joiner", None) is not None:  # delayed labels: their counters
                p.joiner.hooks = self.metrics.joiner_hooks(p.name)
            wanted = p.spec.requests_topic is not None or (
                s.address is not None and serveable(p.spec, p.featurizer)
            )
            if not wanted or not hasattr(p, "publisher"):
                continue
            # a serving process reports the version it serves itself
            hook = self.metrics.publish_hook(p.name, set_version=not own_process)
            p.publisher = Publisher(s.publish_every_s, on_publish=hook)
            self.scorers[p.name] = Scorer(p.spec, p.publisher)
            self.pipelines[p.name] = p
        self.server: PredictServer | None = None
        self.process: ServingProcess | None = None
        if own_process and self.scorers:
            assert s.address is not None  # (own_process)
            self.process = ServingProcess(
                [p.spec for p in self.pipelines.values()],
                s.address,
                token=self.token,
                max_body_bytes=s.max_body_bytes,
                max_events=s.max_events,
                on_request=self.metrics.on_request,
                on_served=self.metrics.served,
            )
            for name, p in self.pipelines.items():  # each publication, also to the process
                p.publisher.mirror = self.process.mirror(name)
                # copies in this process only for its requests topic's scorer
                p.publisher.local = p.spec.requests_topic is not None
        self.threads: list[threading.Thread] = []

    def publish_restored(self) -> None:
        """Serve the restored weights before the first step."""
        for p in self.pipelines.values():
            if p.restored:
                p.publisher.publish(p.learner)

    def start(
        self,
        stop: threading.Event,
        ports: Callable[[PipelineSettings], tuple[Source, Sink]],
    ) -> None:
        s = self.settings.serving
        address = None
        if self.process is not None:
            address = self.process.start().address
        elif s.address is not None and self.scorers:
            sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
            self.server = PredictServer(
                s.address,
                self.scorers,
                token=self.token,
                max_body_bytes=s.max_body_bytes,
                max_events=s.max_events,
                on_request=self.metrics.on_request,
            ).start()
            address = self.server.address
        if address is not None:
            log.info(
                "serving predictions",
                extra={"url": f"http://{address}/predict", "pipelines": ",".join(self.scorers),
                       "token": self.token is not None,
                       "own_process": self.process is not None},
            )  # fmt: skip
        for name, p in self.pipelines.items():
            topic = p.spec.serving_output
            if topic is None:
                continue
            source, sink = ports(p.spec)
            scored = self.metrics.scored.labels(name, "kafka")
            t = threading.Thread(
                target=self._requests, args=(name, source, sink, topic, stop, scored.inc),
                name=f"requests-{name}", daemon=True,
            )  # fmt: skip
            self.threads.append(t)
            t.start()

    def _requests(
        self,
        name: str,
        source: Source,
        sink: Sink,
        topic: str,
        stop: threading.Event,
        on_scored: Any,
    ) -> None:
        try:
            serve_requests(self.scorers[name], source, sink, topic, stop, on_scored=on_scored)
        except Exception:  # a bug: logged; training goes on
            log.exception("serving requests stopped", extra={"pipeline": name})
        finally:
            source.close()
            sink.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.process is not None:
            self.process.stop()
        for t in self.threads:
            t.join(5.0)
