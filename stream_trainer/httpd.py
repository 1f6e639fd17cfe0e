"""One HTTP server on ``host:port`` in a daemon thread: what the metrics endpoints and
``/predict`` share (binding, the one clear error when the address is taken, stop)."""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

from stream_trainer.errors import StreamTrainerError

log = logging.getLogger(__name__)


class Handler(BaseHTTPRequestHandler):
    """What both endpoints' handlers share: one way to answer, and request lines only
    at debug level (logs are quiet by default)."""

    # TCP_NODELAY: an answer goes out as two writes (headers, then body); with Nagle's
    # algorithm the body waited for the client's delayed ACK of the headers, ~40 ms per
    # request on a keep-alive connection (a /predict p50 of 48 ms instead of ~1)
    disable_nagle_algorithm = True

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("http " + fmt, *args)


class BackgroundServer:
    """``what``/``setting`` name the endpoint and the setting that moves it, for the
    error when ``address`` cannot be bound."""

    def __init__(
        self, address: str, handler: type[BaseHTTPRequestHandler], what: str, setting: str
    ) -> None:
        host, _, port = address.rpartition(":")
        try:
            self.httpd = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        except OSError as err:
            raise StreamTrainerError(
                f"cannot serve {what} on {address}: {err.strerror}; choose another "
                f"address with {setting}"
            ) from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name=f"{what.strip('/')}-http", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.httpd.server_address[:2]
        assert isinstance(host, str)  # (bytes only for a socket family other than IP)
        return f"{host}:{port}"

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
