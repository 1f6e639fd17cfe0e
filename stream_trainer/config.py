"""Frozen, typed settings: YAML file + ``STREAM_TRAINER_*`` environment overrides.

Here the daemon's settings (kafka, ingest, metrics, checkpoint, history, source,
serving, device...) and how they are loaded; each entry of ``pipelines:`` is a
:class:`~stream_trainer.pipeline_config.PipelineSettings` (pipeline_config.py).

Environment overrides use ``__`` to walk into sections, e.g.
``STREAM_TRAINER_KAFKA__BOOTSTRAP_SERVERS=broker:9092`` or
``STREAM_TRAINER_CHECKPOINT__EVERY_SECONDS=30``. Values are parsed as YAML scalars.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from stream_trainer import domains
from stream_trainer.errors import ConfigError
from stream_trainer.pipeline_config import PipelineSettings, _Frozen

ENV_PREFIX = "STREAM_TRAINER_"
BUILTIN_KINDS = domains.KINDS


class KafkaSettings(_Frozen):
    """How every Kafka client of the daemon connects (consumers, producers, admin).

    Security settings pass through to every client (edges/tls.py). Secrets come from the
    environment (``STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD``) or a file (``*_file``);
    they are never logged, and ``check-config`` prints them masked."""

    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated HOST:PORT list of the cluster's brokers (any Apache Kafka compatible
    cluster; ``make run`` starts a local Tansu broker and sets this itself)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How clients talk to the brokers: plain TCP, TLS, SASL, or SASL over TLS."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism; required with a SASL ``security_protocol``."""
    sasl_plain_username: str | None = None
    """SASL user name; required with a SASL ``security_protocol``."""
    sasl_plain_password: SecretStr | None = None
    """SASL password: from ``STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD``, never the YAML you
    commit (or use ``sasl_plain_password_file``)."""
    sasl_plain_password_file: Path | None = None
    """A file holding the SASL password (e.g. a mounted secret)."""
    ssl_cafile: Path | None = None
    """CA bundle (PEM) that signed the brokers' certificates."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM), for brokers that require mutual TLS."""
    ssl_keyfile: Path | None = None
    """The client certificate's private key (PEM)."""
    ssl_password: SecretStr | None = None
    """Password of ``ssl_keyfile``: from ``STREAM_TRAINER_KAFKA__SSL_PASSWORD`` or
    ``ssl_password_file``, never the YAML you commit."""
    ssl_password_file: Path | None = None
    """A file holding the password of ``ssl_keyfile``."""
    ssl_check_hostname: bool = True
    """Check that the broker's certificate names the host connected to."""
    group_prefix: str = "stream-trainer"
    """Consumer group of a pipeline: ``<group_prefix>.<pipeline name>``."""
    session_timeout_ms: int = Field(6000, ge=1000)
    """Consumer group session timeout: a member silent this long is dropped (6000: groups
    join in ~3 s; kafka-python's default takes ~23 s)."""
    heartbeat_interval_ms: int = Field(1000, ge=100)
    """How often a consumer heartbeats to its group coordinator."""
    max_poll_interval_ms: int = Field(30000, ge=1000)
    """Longest time between two polls before the group considers a consumer gone."""
    max_poll_records: int = Field(2000, ge=1)
    """Records one poll returns at most."""
    fetch_max_wait_ms: int = Field(20, ge=0)
    """How long the broker may hold a fetch that found nothing new: a floor under the
    event-to-update latency. Not 5: on the local Tansu broker the ingest workers' fetches
    then stopped returning records after ~440k events of the 5k/s stream of
    ``scripts/bench_serving.py``, in all six runs that went that far; in none of nine at 20."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where a consumer group with no committed offsets starts (with ``source.start_from:
    committed``)."""
    request_timeout_ms: int = Field(15000, ge=1000)
    """Timeout of one request to a broker."""
    create_topics: bool = True
    """Create missing input, dead-letter and output topics at start."""
    default_partitions: int = Field(2, ge=1)
    """Partitions of a topic the daemon creates."""

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            if not self.sasl_mechanism or not self.sasl_plain_username:
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs sasl_mechanism and "
                    "sasl_plain_username (and a password: sasl_plain_password from the "
                    "environment, or sasl_plain_password_file)"
                )
            if self.sasl_plain_password is None and self.sasl_plain_password_file is None:
                raise ValueError(
                    "SASL needs a password: set STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD "
                    "or kafka.sasl_plain_password_file"
                )
        return self


START_KEYWORDS = ("committed", "earliest", "latest")


def start_position(value: str) -> str | int:
    """``source.start_from`` as a keyword or a time in Unix milliseconds (UTC when the
    time has no zone); ValueError with what is accepted otherwise.

    >>> start_position("latest"), start_position("2026-11-01T00:00Z")
    ('latest', 1793491200000)
    >>> start_position("2026-11-01") == start_position("2026-11-01T00:00:00+00:00")
    True
    """
    v = str(value).strip()
    if v.lower() in START_KEYWORDS:
        return v.lower()
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(
            f"must be committed, earliest, latest or an ISO 8601 time such as "
            f"2026-11-01T00:00Z, not {v!r}"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


class SourceSettings(_Frozen):
    """Where a pipeline starts reading when its model holds no offsets, and how it reports
    catching up.

    ``start_from``: ``committed`` (the consumer group's committed offsets, else
    ``kafka.auto_offset_reset``), ``earliest``, ``latest`` (the end of the log when the
    daemon starts) or an ISO 8601 time (the first event whose Kafka timestamp is at or
    after it). A restored checkpoint's offsets win over it (``run
    --ignore-checkpoint-offsets`` for one start that does not let them).
    """

    start_from: str = "committed"
    """Where a model without offsets starts reading: ``committed``, ``earliest``,
    ``latest`` or an ISO 8601 time such as ``2026-11-01T00:00Z`` (UTC when no zone).
    ``run --from`` overrides it."""
    progress_every_seconds: float = Field(10.0, gt=0)
    """While catching up (the lag summed over a pipeline's partitions above
    ``caught_up_lag``): one progress line (events behind, events/s, ETA) this often."""
    caught_up_lag: int = Field(1000, ge=0)
    """A pipeline at or below this many events behind counts as caught up."""

    @field_validator("start_from")
    @classmethod
    def _start(cls, v: str) -> str:
        start_position(v)
        return v

    @property
    def position(self) -> str | int:
        return start_position(self.start_from)


class MetricsSettings(_Frozen):
    """Where Prometheus scrapes the daemon."""

    address: str = "127.0.0.1:9108"
    """HOST:PORT of ``/metrics``, ``/healthz`` and ``/readyz`` (loopback by default; port 0
    picks a free one; replicas add their local rank to the port)."""

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108 (port 0 picks a free one)")
        return v


class CheckpointSettings(_Frozen):
    """Where and how often the model state and its offsets are saved."""

    dir: Path = Path("checkpoints")
    """Directory of the checkpoints: ``<dir>/<pipeline>/ckpt-<seq>.pt``."""
    every_seconds: float = Field(10.0, gt=0)
    """Checkpoint (then commit the offsets it holds) this often; also at a stop."""
    keep: int = Field(3, ge=1)
    """Checkpoints kept per pipeline (an unreadable newest one falls back to the one before)."""


class HistorySettings(_Frozen):
    """Optional JSON-lines history of loss and drift per pipeline (for ``report``)."""

    path: Path | None = None
    """JSON-lines file the daemon appends loss and drift lines to (null: none); ``stream-trainer
    report --history`` draws it."""
    every_seconds: float = Field(5.0, gt=0)
    """One line per pipeline this often."""


class ServingSettings(_Frozen):
    """``POST /predict`` on its own address (None: no HTTP serving). The optional bearer
    token comes from STREAM_TRAINER_SERVING_TOKEN or ``token_file``, never this file."""

    address: str | None = None
    """HOST:PORT of ``POST /predict`` and ``/predict/<pipeline>`` (null: no HTTP serving)."""
    token_file: Path | None = None
    """A file holding the bearer token requests must carry (or
    ``STREAM_TRAINER_SERVING_TOKEN``; none: no token asked)."""
    max_body_bytes: int = Field(1 << 20, ge=64)
    """Largest request body accepted (413 above)."""
    max_events: int = Field(4096, ge=1)
    """Most events in one request."""
    publish_every_s: float = Field(0.5, gt=0)
    """The trainer publishes its weights to serving at most this often (at a step's end, or
    at an idle poll's when the stream went quiet with updates not yet published)."""
    process: bool = True
    """Answer ``/predict`` in a process of its own (weights through shared memory); false:
    on a thread of the daemon's, where requests and the trainer share one GIL."""

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        return v if v is None else MetricsSettings._host_port(v)


class IngestSettings(_Frozen):
    """Processes that fetch and decode beside each pipeline's trainer (edges/ingest.py)."""

    workers: int | Literal["auto"] = "auto"
    """Ingest worker processes per pipeline: ``auto`` = the machine's cores but one,
    shared out over the pipelines and the replicas on this machine (at least 1, at most
    8); 0 = fetch and decode in the trainer's own process. ``by_key`` and joined
    (``labels:``) pipelines always use 0."""

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 64:
            raise ValueError("workers must be 'auto' or 0..64")
        return v


class Settings(_Frozen):
    """The daemon's config file: its sections, and ``pipelines``."""

    kafka: KafkaSettings = KafkaSettings()
    """The Kafka cluster and how clients connect to it."""
    ingest: IngestSettings = IngestSettings()
    """Ingest worker processes."""
    metrics: MetricsSettings = MetricsSettings()
    """Prometheus metrics and health endpoints."""
    checkpoint: CheckpointSettings = CheckpointSettings()
    """Checkpoints: where, how often, how many."""
    history: HistorySettings = HistorySettings()
    """An optional history file of loss and drift (for ``report``)."""
    source: SourceSettings = SourceSettings()
    """Where a model without offsets starts reading (backfill)."""
    serving: ServingSettings = ServingSettings()
    """``POST /predict`` with the weights being trained."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where models train: ``auto`` = CUDA when torch sees it, else the CPU."""
    torch_threads: int = Field(1, ge=1, le=256)
    """torch's intra-op threads in the trainer (``torch.set_num_threads``)."""
    cuda_graphs: bool = False
    """GPU only: capture each pipeline's forward + backward as a CUDA graph over fixed
    batches of ``batch.max_size`` rows (no effect on the CPU)."""
    bf16: bool = False
    """GPU only: autocast forward passes to bfloat16 (no effect on the CPU)."""
    seed: int = 0
    """Seed of the models' initial weights and of the replay reservoir."""
    stall_timeout_s: float = Field(60.0, gt=0)
    """Replicas under torchrun: a replica that does not answer a sync round within this many
    seconds is reported as stalled, and every replica exits so that torchrun restarts the
    group (from the last checkpoint) with the members that answer."""
    pipelines: tuple[PipelineSettings, ...] = Field(min_length=1)
    """The pipelines this daemon trains: one model (or one per key) each, with its own
    topics, consumer group and checkpoints."""

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [p.name for p in self.pipelines]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pipeline names must be unique; repeated: {', '.join(dupes)}")
        return self


def _set_path(doc: dict[str, Any], path: list[str], value: Any) -> None:
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(path)}: {key} is not a section")
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``STREAM_TRAINER_A__B=v`` variables into a nested dict ``{a: {b: v}}``.

    Only known top-level sections/keys are taken, so unrelated CLI variables
    (``STREAM_TRAINER_CONFIG``...) are not mistaken for settings.

    >>> env_overrides({"STREAM_TRAINER_KAFKA__BOOTSTRAP_SERVERS": "h:1", "OTHER": "x"})
    {'kafka': {'bootstrap_servers': 'h:1'}}
    """
    out: dict[str, Any] = {}
    fields = {k: f.annotation for k, f in Settings.model_fields.items() if k != "pipelines"}
    sections = {k for k, t in fields.items() if isinstance(t, type) and issubclass(t, BaseModel)}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        # a known setting: a top-level scalar (SEED), or a key inside a section (KAFKA__X)
        if path[0] not in fields or (len(path) == 1) == (path[0] in sections):
            continue
        # Strings as they are (pydantic converts "30" or "true"); only [..] and {..} are YAML.
        value = yaml.safe_load(raw) if raw.strip()[:1] in ("[", "{") else raw
        _set_path(out, path, value)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(merged.get(k), Mapping):
            merged[k] = _merge(dict(merged[k]), v)
        else:
            merged[k] = v
    return merged


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see `stream-trainer check-config --help`)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_settings(
    doc: Mapping[str, Any], source: str = "config", overrides: Mapping[str, Any] | None = None
) -> Settings:
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping with a 'pipelines' list")
    merged = _merge(dict(doc), overrides or {})
    try:
        return Settings.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def load_settings(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read YAML at ``path``, apply env then explicit overrides, validate."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p} (pass --config PATH)") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {p}: {err.strerror}") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    layered = _merge(env_overrides(os.environ if environ is None else environ), overrides or {})
    return parse_settings(doc, str(p), layered)


def dump_settings(settings: Settings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False)
