"""One pipeline's settings (an entry of ``pipelines:`` in the config): its kind and
topics, and its sections (batch, optimizer, drift, replay, sync, delayed labels), with
the checks that need several of them at once. The daemon's settings, and the loading
of both from YAML and the environment: config.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from stream_trainer import domains


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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
    # at most this many replayed rows per update (null: no cap): many per event while
    # batches are small, few once a backlog makes them large (tabular: 32)
    max_rows: int | None = Field(None, ge=1)


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

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        """The kind's own defaults for sections the pipeline leaves out or leaves partly
        unset (tabular: small batches), below whatever the pipeline sets."""
        if not isinstance(data, dict) or data.get("kind") not in domains.ALL_KINDS:
            return data
        defaults = domains.get(data["kind"]).defaults
        if not defaults:
            return data
        out = dict(data)
        for section, values in defaults.items():
            given = out.get(section)
            if given is None:
                out[section] = dict(values)
            elif isinstance(given, dict):
                out[section] = {**values, **given}
        return out

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
