"""``POST /predict``: score one event (a JSON object) or a batch (a JSON list).

Its own address (loopback by default), apart from ``/metrics``: scoring can be exposed
to the application without exposing the operator's endpoints, or the reverse. An
optional bearer token (``STREAM_TRAINER_SERVING_TOKEN`` or ``serving.token_file``, never
the YAML itself) guards it; bodies over ``serving.max_body_bytes`` are refused unread.
Every refusal is a JSON ``{"error": reason, "detail": ...}`` with a 4xx status, counted.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from stream_trainer import httpd
from stream_trainer.errors import ConfigError
from stream_trainer.httpd import BackgroundServer
from stream_trainer.serving.scorer import NOT_READY, Scorer

log = logging.getLogger(__name__)

TOKEN_ENV = "STREAM_TRAINER_SERVING_TOKEN"
# (pipeline, outcome, seconds, events scored)
OnRequest = Callable[[str, str, float, int], None]


def read_token(token_file: Path | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token: the environment first, then the file; None: no token needed."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return env[TOKEN_ENV].strip()
    if token_file is None:
        return None
    try:
        token = Path(token_file).read_text().strip()
    except OSError as err:
        raise ConfigError(f"serving.token_file {token_file}: {err.strerror}") from None
    if not token:
        raise ConfigError(f"serving.token_file {token_file} is empty")
    return token


class _Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        self.status, self.reason, self.detail = status, reason, detail


class PredictServer(BackgroundServer):
    """``POST /predict`` (the only served pipeline) and ``POST /predict/<pipeline>``."""

    def __init__(
        self,
        address: str,
        scorers: Mapping[str, Scorer],
        *,
        token: str | None = None,
        max_body_bytes: int = 1 << 20,
        max_events: int = 4096,
        on_request: OnRequest | None = None,
    ) -> None:
        self.scorers, self.token = dict(scorers), token
        self.max_body_bytes, self.max_events = max_body_bytes, max_events
        self.on_request = on_request or (lambda *a: None)
        super().__init__(address, self._handler(), "/predict", "serving.address")

    # ---- one request -------------------------------------------------------------------
    def _scorer(self, path: str) -> tuple[str, Scorer]:
        if path == "/predict" and len(self.scorers) == 1:
            return next(iter(self.scorers.items()))
        name = path.removeprefix("/predict/") if path.startswith("/predict/") else None
        if name is None and path == "/predict":
            raise _Refused(
                404,
                "no_pipeline",
                f"several pipelines: POST /predict/<one of {', '.join(sorted(self.scorers))}>",
            )
        if name not in self.scorers:
            raise _Refused(
                404,
                "not_found",
                f"POST /predict or /predict/<pipeline> ({', '.join(sorted(self.scorers))})",
            )
        return name, self.scorers[name]

    def _authorize(self, header: str | None) -> None:
        if self.token is None:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), self.token):
            raise _Refused(401, "unauthorized", "Authorization: Bearer <token> required")

    def _body(self, headers: Any, rfile: Any) -> Any:
        length = headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _Refused(411, "length_required", "send a Content-Length (no chunked bodies)")
        n = int(length)
        if n > self.max_body_bytes:
            raise _Refused(
                413, "too_large", f"{n} bytes > serving.max_body_bytes {self.max_body_bytes}"
            )
        raw = rfile.read(n)
        try:
            return json.loads(raw, parse_constant=_no_constant)
        except RecursionError:
            raise _Refused(400, "too_deep", "nesting too deep") from None
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise _Refused(400, "not_json", str(err)[:160]) from None

    def predict(self, scorer: Scorer, headers: Any, rfile: Any) -> tuple[int, dict[str, Any], int]:
        """(status, response document, events scored)."""
        self._authorize(headers.get("Authorization"))
        body = self._body(headers, rfile)
        batch = isinstance(body, list)
        docs = body if batch else [body]
        if len(docs) > self.max_events:
            raise _Refused(
                413, "too_many_events", f"{len(docs)} events > {self.max_events} per request"
            )
        res = scorer.score(docs)
        errors: list[dict[str, Any]] = [
            {"index": i, "error": why.reason, "detail": why.detail} for i, why in res.errors
        ]
        if any(e["error"] == NOT_READY for e in errors):
            raise _Refused(503, NOT_READY, "no weights published yet: the pipeline has not trained")
        scored = sum(s is not None for s in res.scores)
        if not batch:
            if errors:
                raise _Refused(422, errors[0]["error"], errors[0]["detail"])
            return 200, {"score": res.scores[0], "model_version": res.version}, scored
        doc: dict[str, Any] = {"scores": res.scores, "model_version": res.version}
        if errors:
            doc["errors"] = errors
        return 200, doc, scored

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(httpd.Handler):
            protocol_version = "HTTP/1.1"  # keep-alive: one connection for many requests

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                t0 = time.perf_counter()
                path, name, scored = self.path.split("?", 1)[0], "", 0
                try:
                    name, scorer = server._scorer(path)
                    status, doc, scored = server.predict(scorer, self.headers, self.rfile)
                    outcome = "ok"
                except _Refused as r:
                    status, outcome = r.status, r.reason
                    doc = {"error": r.reason, "detail": r.detail}
                    if r.status in (411, 413):
                        self.close_connection = True  # the unread body would follow
                except Exception:  # a bug: a 500, logged, the server carries on
                    log.exception("predict failed", extra={"path": path})
                    status, outcome, doc = 500, "internal", {"error": "internal"}
                body = json.dumps(doc).encode()
                server.on_request(name or "-", outcome, time.perf_counter() - t0, scored)
                self._send(status, body)

            def do_GET(self) -> None:  # noqa: N802
                doc = {"error": "method", "detail": "POST a JSON event or list to /predict"}
                self._send(405, json.dumps(doc).encode())

        return Handler


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")
