"""HTTP endpoints: ``/metrics`` (Prometheus text), ``/healthz`` (alive), ``/readyz`` (serving)."""

from __future__ import annotations

from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stream_trainer import httpd
from stream_trainer.httpd import BackgroundServer

Check = Callable[[], tuple[bool, str]]


class MetricsServer(BackgroundServer):
    """Serves a registry plus liveness/readiness checks on ``host:port`` in a daemon thread."""

    def __init__(
        self, address: str, registry: CollectorRegistry, healthy: Check, ready: Check
    ) -> None:
        self.registry, self.healthy, self.ready = registry, healthy, ready
        super().__init__(
            address, self._handler(), "metrics", "metrics.address or --metrics-address"
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(httpd.Handler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, why = (server.healthy if path == "/healthz" else server.ready)()
                    self._send(
                        200 if ok else 503,
                        (why or "ok").encode() + b"\n",
                        "text/plain; charset=utf-8",
                    )
                else:
                    self._send(
                        404,
                        b"not found: try /metrics, /healthz or /readyz\n",
                        "text/plain; charset=utf-8",
                    )

        return Handler
