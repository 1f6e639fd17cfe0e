"""Frozen, typed settings: YAML file + ``STREAM_TRAINER_*`` environment overrides.

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
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from stream_trainer import domains
from stream_trainer.errors import ConfigError

ENV_PREFIX = "STREAM_TRAINER_"
BUILTIN_KINDS = domains.KINDS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(_Frozen):
    bootstrap_servers: str = "127.0.0.1:9092"
    # Security: passed to every Kafka client (edges/tls.py). Secrets come from the environment
    # (STREAM_TRAINER_KAFKA__SASL_PLAIN_PASSWORD) or a file (*_file); they are never logged
    # and `check-config` prints them masked.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    sasl_plain_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    ssl_password_file: Path | None = None
    ssl_check_hostname: bool = True
    group_prefix: str = "stream-trainer"
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(1000, ge=100)
    max_poll_interval_ms: int = Field(30000, ge=1000)
    max_poll_records: int = Field(2000, ge=1)
    # How long the broker may hold a fetch that found nothing new: a floor under the
    # event-to-update latency. Not 5: on the local Tansu broker the ingest workers'
    # fetches then stopped returning records after ~440k events of the 5k/s stream of
    # `scripts/bench_serving.py`, in all six runs that went that far; in none of nine at 20.
    fetch_max_wait_ms: int = Field(20, ge=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    request_timeout_ms: int = Field(15000, ge=1000)
    create_topics: bool = True
    default_partitions: int = Field(2, ge=1)

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
    # while the lag (summed over a pipeline's partitions) is above caught_up_lag, one
    # progress line (events behind, events/s, ETA) every progress_every_seconds
    progress_every_seconds: float = Field(10.0, gt=0)
    caught_up_lag: int = Field(1000, ge=0)

    @field_validator("start_from")
    @classmethod
    def _start(cls, v: str) -> str:
        start_position(v)
        return v

    @property
    def position(self) -> str | int:
        return start_position(self.start_from)


class MetricsSettings(_Frozen):
    address: str = "127.0.0.1:9108"

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not port.isdigit() or not (0 <= int(port) < 65536):
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9108 (port 0 picks a free one)")
        return v


class CheckpointSettings(_Frozen):
    dir: Path = Path("checkpoints")
    every_seconds: float = Field(10.0, gt=0)
    keep: int = Field(3, ge=1)


class HistorySettings(_Frozen):
    """Optional JSON-lines history of loss and drift per pipeline (for ``report``)."""

    path: Path | None = None
    every_seconds: float = Field(5.0, gt=0)


class BatchSettings(_Frozen):
    # Adaptive: a poll that empties what the broker had ready trains what is pending at
    # once (light traffic: small, fresh batches); under a backlog polls come back full
    # and batches fill up to max_size. max_latency_ms bounds the wait of the oldest
    # pending event in between. 256, not more: larger batches learn worse per event
    # (scripts/batch_quality.py: ticks +3.5 % at 1024, clicks +0.3 %); the ingest workers, not
    # bigger batches, buy the throughput.
    max_size: int = Field(256, ge=1, le=65536)
    max_latency_ms: float = Field(20.0, ge=0)
    # under a long backlog (consumer lag above backlog_lag events) batches grow to this
    # size, and towards it when training falls behind (the lag grows two seconds in a
    # row), until the pipeline has caught up (Pipeline._fit_batches): a step's fixed
    # cost then spreads over 4x the events. Not on a short backlog that shrinks: there
    # more updates per event learn more.
    backlog_max_size: int = Field(1024, ge=1, le=65536)
    backlog_lag: int = Field(50_000, ge=0)


class OptimizerSettings(_Frozen):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(0.003, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip_norm: float | None = Field(5.0, gt=0)
    # Embeddings: sparse gradients (only the rows a batch touches are updated) with their
    # own optimizer. null = sparse on the CPU, dense on a GPU.
    sparse_embeddings: bool | None = None
    embedding_optimizer: Literal["sparse_adam", "adagrad", "sgd"] = "adagrad"
    embedding_lr: float | None = Field(0.1, gt=0)  # null = lr


DriftAction = Literal["reset_optimizer", "boost_lr", "reset_model", "challenger"]


class DriftSettings(_Frozen):
    detector: Literal[
        "page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w", "none"
    ] = "page_hinkley"
    params: dict[str, float | int | str] = Field(default_factory=dict)  # passed to river
    # the calibrated signal (drift/signal.py): per-event losses in blocks of `block`
    # events, each block's mean a z-score against a reference with this half-life (in
    # blocks), built over `warmup_blocks` blocks after a start or a detection
    block: int = Field(250, ge=1)
    warmup_blocks: int = Field(16, ge=2)
    reference_half_life: float = Field(64.0, gt=0)
    # watch the float inputs' statistics too (reported, no action: a shift in the inputs
    # that does not raise the loss needs none, and one that does is caught by the loss)
    input: bool = True
    # challenger by default: measured (`evaluate --study adaptation`) to recover sooner than
    # no action, and harmless on a false alarm (it is dropped unless it wins), where
    # reset_optimizer + boost_lr raised the loss after a drift on the click streams
    actions: tuple[DriftAction, ...] = ("challenger",)
    boost_factor: float = Field(3.0, ge=1.0)
    boost_updates: int = Field(200, ge=1)
    # the challenger action: a fresh model beside the champion, promoted when its loss
    # over the last `window` examples is `margin` (relative) below; dropped after `patience`
    challenger_window: int = Field(2000, ge=1)
    challenger_margin: float = Field(0.02, ge=0.0, lt=1.0)
    challenger_patience: int = Field(20000, ge=1)


class ReplaySettings(_Frozen):
    """A reservoir of past examples mixed into each update (0 = off)."""

    capacity: int = Field(0, ge=0)
    fraction: float = Field(0.25, gt=0.0, le=4.0)  # replayed rows per new row


class SyncSettings(_Frozen):
    """How replicas (``torchrun --nproc-per-node N``) keep this pipeline's one model in
    sync; ignored by a single process.

    ``allreduce``: synchronous data parallel, gradients all-reduced every step (replicas
    without data that step contribute zero). ``average``: local SGD, each replica steps
    on its own partitions with no round per batch; the replicas meet every ``every_ms``,
    sooner when the busiest one's pace would take it ``every_steps`` local steps before
    that, and average parameters and optimizer state, each replica's copy weighed by
    the events it trained since the last averaging.
    """

    mode: Literal["allreduce", "average"] = "allreduce"
    # embeddings (sparse_embeddings) sync as rows: the rows a step touched (allreduce)
    # or changed since the last averaging (average), not whole tables; false sends
    # every row, densified (`make bench-replicas` measures both)
    sparse: bool = True
    # 20: two replicas' prequential log loss +0.9 % over one replica's in the in-process
    # run of scripts/bench_replicas.py (50: +1.0 %), averaging still rare enough to cost
    # little
    every_steps: int = Field(20, ge=1)
    every_ms: float = Field(1000.0, gt=0)
    # compare a fingerprint of the weights across replicas every this many sync rounds
    # (allreduce) or averagings (average); 0 = never; a mismatch is logged and counted
    check_every: int = Field(100, ge=0)


class ServingSettings(_Frozen):
    """``POST /predict`` on its own address (None: no HTTP serving). The optional bearer
    token comes from STREAM_TRAINER_SERVING_TOKEN or ``token_file``, never this file."""

    address: str | None = None
    token_file: Path | None = None
    max_body_bytes: int = Field(1 << 20, ge=64)
    max_events: int = Field(4096, ge=1)  # events per request
    # the trainer publishes its weights to serving at most this often (at a step's end, or
    # at an idle poll's when the stream went quiet with updates not yet published)
    publish_every_s: float = Field(0.5, gt=0)
    # answer /predict in a process of its own (weights through shared memory), not on a
    # thread of the daemon's, where requests and the trainer share one GIL
    process: bool = True

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        return v if v is None else MetricsSettings._host_port(v)


class LabelSettings(_Frozen):
    """Delayed labels: ``topics`` carry impressions (events without a label, with a
    ``request_id``); ``labels.topic`` carries ``{"request_id", "label", "ts"}``. An
    impression waits ``window_s`` (event time) for its label, then becomes a negative
    or is dropped."""

    topic: str
    window_s: float = Field(900.0, gt=0)
    on_expiry: Literal["negative", "drop"] = "negative"
    max_pending: int = Field(1_000_000, ge=1)


class PipelineSettings(_Frozen):
    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,62}$")
    kind: str  # a domain of stream_trainer.domains (checked by _known_kind)
    topics: tuple[str, ...] = Field(min_length=1)
    dead_letter_topic: str | None = None
    output_topic: str | None = None
    # which trained events get an output record: all, or only those the featurizer
    # flags (sensors' anomalies); unset: the kind's default (sensors: flagged)
    outputs: Literal["all", "flagged"] | None = None
    featurizer: str | dict[str, Any] = Field(default_factory=dict)
    model: str | dict[str, Any] = Field(default_factory=dict)
    batch: BatchSettings = BatchSettings()
    optimizer: OptimizerSettings = OptimizerSettings()
    drift: DriftSettings = DriftSettings()
    replay: ReplaySettings = ReplaySettings()
    sync: SyncSettings = SyncSettings()
    # shared: one model learns from every key; by_key: a small model per key (ticks'
    # symbol, a sensor), sharded with the Kafka partitions, at most max_models resident
    # in a process (saved ones are evicted and reloaded on their next event)
    partitioning: Literal["shared", "by_key"] = "shared"
    max_models: int = Field(10_000, ge=1)
    max_event_bytes: int = Field(1 << 20, ge=64)
    dedup_window: int = Field(100_000, ge=0)  # refuse exact repeats of recent events; 0 = off
    # serving over Kafka: events on requests_topic are scored (never learned from) into
    # predictions_topic (default "<requests_topic>.predictions"), with the request's key
    requests_topic: str | None = None
    predictions_topic: str | None = None
    labels: LabelSettings | None = None  # delayed labels (see LabelSettings)

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, v: Any) -> Any:
        if v not in domains.ALL_KINDS:  # the message pydantic gave for the Literal it was
            raise PydanticCustomError(
                "literal_error", "Input should be {expected}", {"expected": domains.expected()}
            )
        return v

    @model_validator(mode="after")
    def _custom_needs_paths(self) -> PipelineSettings:
        if not domains.get(self.kind).builtin and not (
            isinstance(self.model, str) and isinstance(self.featurizer, str)
        ):
            raise ValueError(
                f"kind {self.kind!r} needs model: 'pkg.module:factory' and "
                "featurizer: 'pkg.module:Class' import paths"
            )
        return self

    @model_validator(mode="after")
    def _outputs_flag(self) -> PipelineSettings:
        if self.outputs == "flagged" and domains.get(self.kind).flag is None:
            raise ValueError(
                f"outputs: flagged needs a kind whose featurizer flags events (sensors' "
                f"anomalies); kind {self.kind!r} flags none: use outputs: all"
            )
        return self

    @model_validator(mode="after")
    def _by_key_limits(self) -> PipelineSettings:
        if self.partitioning != "by_key":
            return self
        if not domains.get(self.kind).by_key:
            raise ValueError(
                "partitioning by_key needs events with a key per model (ticks: symbol, "
                "sensors: sensor_id, or a custom featurizer that sets keys)"
            )
        return self

    @model_validator(mode="after")
    def _labels_fit(self) -> PipelineSettings:
        if self.labels is None:
            return self
        if self.kind != "clicks" or self.partitioning != "shared":
            raise ValueError(
                "labels (delayed labels) needs kind clicks and partitioning shared: an "
                "impression is scored and later learned from on its own"
            )
        if self.labels.topic in self.topics:
            raise ValueError("labels.topic must not be one of topics (those carry impressions)")
        return self

    @property
    def input_topics(self) -> tuple[str, ...]:
        """What the pipeline's consumer reads: its topics, and the labels topic."""
        return self.topics + ((self.labels.topic,) if self.labels is not None else ())

    @property
    def serving_output(self) -> str | None:
        """Where scored requests go (None: no Kafka serving)."""
        if self.requests_topic is None:
            return None
        return self.predictions_topic or f"{self.requests_topic}.predictions"

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.topics[0]}.dlq"

    @property
    def group_suffix(self) -> str:
        return self.name


class IngestSettings(_Frozen):
    # processes that fetch and decode beside each pipeline's trainer (edges/ingest.py):
    # "auto" = the machine's cores but one shared out over the pipelines and the replicas
    # on this machine (at least 1, at most 8); 0 = in the trainer's own process. by_key and
    # joined (labels:) pipelines always use 0.
    workers: int | Literal["auto"] = "auto"

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not 0 <= v <= 64:
            raise ValueError("workers must be 'auto' or 0..64")
        return v


class Settings(_Frozen):
    kafka: KafkaSettings = KafkaSettings()
    ingest: IngestSettings = IngestSettings()
    metrics: MetricsSettings = MetricsSettings()
    checkpoint: CheckpointSettings = CheckpointSettings()
    history: HistorySettings = HistorySettings()
    source: SourceSettings = SourceSettings()
    serving: ServingSettings = ServingSettings()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1, le=256)
    # GPU fast path (no effect on the CPU): capture each pipeline's forward + backward as
    # a CUDA graph over fixed batches of batch.max_size rows; autocast forwards to bf16.
    cuda_graphs: bool = False
    bf16: bool = False
    seed: int = 0
    # replicas under torchrun: a replica that does not answer a sync round within this
    # many seconds is reported as stalled, and every replica exits so that torchrun
    # restarts the group (from the last checkpoint) with the members that answer
    stall_timeout_s: float = Field(60.0, gt=0)
    pipelines: tuple[PipelineSettings, ...] = Field(min_length=1)

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
