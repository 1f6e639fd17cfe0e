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
from stream_trainer.wire_config import AvroSettings, FieldMapping


class _Frozen(BaseModel):
    # a field's docstring is its description: the config reference (docs/reference/
    # config.md) is generated from them, and a test fails when one is missing
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class BatchSettings(_Frozen):
    """Adaptive micro-batches: a poll that empties what the broker had ready trains what is
    pending at once (light traffic: small, fresh batches); under a backlog polls come back
    full and batches fill up to ``max_size``."""

    max_size: int = Field(256, ge=1, le=65536)
    """Events per update at most, outside a long backlog. 256, not more: larger batches
    learn worse per event (``scripts/batch_quality.py``: ticks +3.5 % at 1024, clicks
    +0.3 %); the ingest workers, not bigger batches, buy the throughput."""
    max_latency_ms: float = Field(20.0, ge=0)
    """The oldest pending event waits at most this long for its batch to fill."""
    backlog_max_size: int = Field(1024, ge=1, le=65536)
    """Under a long backlog (lag above ``backlog_lag``) batches grow to this size, and
    towards it (doubling) when training falls behind (the lag grew two seconds in a row),
    until the pipeline has caught up: a step's fixed cost then spreads over 4x the events.
    Not on a short backlog that shrinks: there more updates per event learn more."""
    backlog_lag: int = Field(50_000, ge=0)
    """Consumer lag (events) above which batches grow to ``backlog_max_size``."""


class OptimizerSettings(_Frozen):
    """The optimizers of the model's dense layers and of its embeddings."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimizer of the dense layers (and of embeddings kept dense)."""
    lr: float = Field(0.003, gt=0)
    """Learning rate of ``name``."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay of ``name``."""
    grad_clip_norm: float | None = Field(5.0, gt=0)
    """Clip the gradient norm to this (counted in ``stream_trainer_updates_clipped_total``);
    null: no clipping."""
    sparse_embeddings: bool | None = None
    """Embeddings with sparse gradients (only the rows a batch touches are updated);
    null = sparse on the CPU, dense on a GPU (fixed shapes, CUDA graphs). Either way the
    embeddings keep their own optimizer, and checkpoints move between the two."""
    embedding_optimizer: Literal["sparse_adam", "adagrad", "sgd"] = "adagrad"
    """Optimizer of the embeddings (with dense gradients, ``sparse_adam`` is Adam)."""
    embedding_lr: float | None = Field(0.1, gt=0)
    """Learning rate of ``embedding_optimizer``; null = ``lr``."""


DriftAction = Literal["reset_optimizer", "boost_lr", "reset_model", "challenger"]


class DriftSettings(_Frozen):
    """Drift detection on the calibrated loss signal (drift/signal.py), and what to do on a
    detection."""

    detector: Literal[
        "page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w", "none"
    ] = "page_hinkley"
    """River detector fed the calibrated signal (``none``: no drift detection)."""
    params: dict[str, float | int | str] = Field(default_factory=dict)
    """Keyword arguments of the river detector, in units of the calibrated signal (standard
    deviations of a block's mean loss); page_hinkley's defaults: ``{threshold: 10.0,
    delta: 1.0}``."""
    block: int = Field(250, ge=1)
    """Per-event losses are cut into blocks of this many events; each block's mean is one
    z-score for the detector."""
    warmup_blocks: int = Field(16, ge=2)
    """Blocks that build the reference after a start or a detection, before any z-score."""
    reference_half_life: float = Field(64.0, gt=0)
    """Half-life, in blocks, of the reference the z-scores are taken against."""
    input: bool = True
    """Watch the float inputs' statistics too (``stream_trainer_input_drift_detected_total``;
    reported, no action: a shift that does not raise the loss needs none, and one that does
    is caught by the loss)."""
    actions: tuple[DriftAction, ...] = ("challenger",)
    """What a detection does: ``challenger`` (a fresh model races the champion),
    ``reset_model``, ``reset_optimizer``, ``boost_lr``. Challenger by default: measured
    (``evaluate --study adaptation``) to recover sooner than no action, and harmless on a
    false alarm (it is dropped unless it wins)."""
    boost_factor: float = Field(3.0, ge=1.0)
    """``boost_lr``: multiply the learning rates by this ..."""
    boost_updates: int = Field(200, ge=1)
    """... decaying back over this many updates."""
    challenger_window: int = Field(2000, ge=1)
    """``challenger``: compare the two models' losses over this many recent examples."""
    challenger_margin: float = Field(0.02, ge=0.0, lt=1.0)
    """``challenger``: promoted when its loss is this fraction below the champion's."""
    challenger_patience: int = Field(20000, ge=1)
    """``challenger``: dropped after this many examples without winning."""


class ReplaySettings(_Frozen):
    """A reservoir of past examples mixed into each update (0 = off)."""

    capacity: int = Field(0, ge=0)
    """Examples kept in the uniform reservoir (0: replay off)."""
    fraction: float = Field(0.25, gt=0.0, le=4.0)
    """Replayed rows mixed into an update per new row."""
    max_rows: int | None = Field(None, ge=1)
    """At most this many replayed rows per update (null: no cap): many per event while
    batches are small, few once a backlog makes them large (tabular: 32)."""


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
    """``allreduce``: synchronous data parallel; ``average``: local SGD with periodic
    averaging."""
    sparse: bool = True
    """Embeddings (``sparse_embeddings``) sync as rows: the rows a step touched (allreduce)
    or changed since the last averaging (average), not whole tables; false sends every
    row, densified (``make bench-replicas`` measures both)."""
    every_steps: int = Field(20, ge=1)
    """``average``: meet after at most this many local steps of the busiest replica. 20:
    two replicas' log loss +0.9 % over one replica's in ``scripts/bench_replicas.py``'s
    in-process run (50: +1.0 %)."""
    every_ms: float = Field(1000.0, gt=0)
    """``average``: meet at least this often."""
    check_every: int = Field(100, ge=0)
    """Compare a fingerprint of the weights across replicas every this many sync rounds
    (allreduce) or averagings (average); 0 = never; a mismatch is logged and counted."""


class LabelSettings(_Frozen):
    """Delayed labels: ``topics`` carry impressions (events without a label, with a
    ``request_id``); ``labels.topic`` carries ``{"request_id", "label", "ts"}``. An
    impression waits ``window_s`` (event time) for its label, then becomes a negative
    or is dropped."""

    topic: str
    """Topic of the labels, ``{"request_id", "label", "ts"}``."""
    window_s: float = Field(900.0, gt=0)
    """How long (event time) an impression waits for its label; it is trained when the
    window ends, with its label or as ``on_expiry`` says."""
    on_expiry: Literal["negative", "drop"] = "negative"
    """An impression with no label at its window's end: a negative (0), or dropped."""
    max_pending: int = Field(1_000_000, ge=1)
    """Impressions held at most; beyond it the oldest are resolved first."""


class PipelineSettings(_Frozen):
    """One entry of ``pipelines:``: a model learning from some topics."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_\-]{0,62}$")
    """The pipeline's name: its metrics' ``pipeline`` label, its consumer group's suffix,
    its checkpoint directory, its ``/predict/<name>`` path."""
    kind: str  # a domain of stream_trainer.domains (checked by _known_kind)
    """The event kind: a built-in (``clicks``, ``ticks``, ``sensors``) or ``custom`` (your
    featurizer and model by import path)."""
    topics: tuple[str, ...] = Field(min_length=1)
    """Input topics (with ``labels:``, the impressions)."""
    dead_letter_topic: str | None = None
    """Where refused events go, with a ``reason`` header; null: ``<first topic>.dlq``."""
    output_topic: str | None = None
    """One JSON record per trained event (its prequential prediction, target, loss,
    offset; sensors add ``anomaly_score``, ``anomaly``); null: none (sensors:
    ``<topic>.anomalies``)."""
    outputs: Literal["all", "flagged"] | None = None
    """Which trained events get an output record: all, or only those the featurizer flags
    (sensors' anomalies); null: the kind's default (sensors: flagged, others: all)."""
    featurizer: str | dict[str, Any] = Field(default_factory=dict)
    """The kind's featurizer parameters (e.g. ticks' ``{window: 16}``, sensors'
    ``{channels: [...], anomaly_threshold: 4.0}``), or with ``kind: custom`` an import
    path ``pkg.module:Class``."""
    model: str | dict[str, Any] = Field(default_factory=dict)
    """The kind's model parameters (e.g. clicks' ``{dim: 16, hidden: 64}``), or with
    ``kind: custom`` an import path ``pkg.module:build`` (``build(input_spec) ->
    torch.nn.Module``)."""
    batch: BatchSettings = BatchSettings()
    """Adaptive micro-batching."""
    optimizer: OptimizerSettings = OptimizerSettings()
    """The optimizers."""
    drift: DriftSettings = DriftSettings()
    """Drift detection and the actions on a detection."""
    replay: ReplaySettings = ReplaySettings()
    """A reservoir of past examples mixed into updates (off by default)."""
    sync: SyncSettings = SyncSettings()
    """How replicas under torchrun keep one model."""
    partitioning: Literal["shared", "by_key"] = "shared"
    """``shared``: one model learns from every key; ``by_key``: a small model per key
    (ticks' symbol, a sensor), sharded with the Kafka partitions."""
    max_models: int = Field(10_000, ge=1)
    """``by_key``: models resident in a process at most (saved ones are evicted and
    reloaded on their next event)."""
    max_event_bytes: int = Field(1 << 20, ge=64)
    """Larger events are refused (reason ``too_large``)."""
    dedup_window: int = Field(100_000, ge=0)
    """Refuse exact repeats of the last this many accepted events (reason ``duplicate``),
    e.g. a producer's retry; 0 = off."""
    requests_topic: str | None = None
    """Serving over Kafka: events on this topic are scored (never learned from) into
    ``predictions_topic``, with the request's key."""
    predictions_topic: str | None = None
    """Where scored requests go; null: ``<requests_topic>.predictions``."""
    labels: LabelSettings | None = None
    """Delayed labels: ``topics`` carry impressions, this names the labels' topic and the
    join window (clicks only)."""
    format: Literal["json", "avro"] = "json"
    """The events' wire format: JSON objects, or Avro records (``avro:`` names the
    schema or the schemas by id); see docs/reference/formats.md."""
    avro: AvroSettings | None = None
    """``format: avro``: ``{schema: FILE.avsc}`` (plain Avro binary) or ``{schemas: DIR}``
    (Confluent's framing, ``<id>.avsc`` files)."""
    fields: FieldMapping | None = None
    """Where the kind's fields are in your events: dotted paths, timestamps' units, labels
    from values, context features; see docs/how-to/field-mapping.md."""

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

    @model_validator(mode="after")
    def _wire_fits(self) -> PipelineSettings:
        if (self.format == "avro") != (self.avro is not None):
            raise ValueError(
                "format: avro needs avro: {schema: FILE.avsc} or {schemas: DIR}"
                if self.avro is None
                else "avro: settings need format: avro"
            )
        d = domains.get(self.kind)
        if self.fields is not None:
            if not d.mapped:
                raise ValueError(f"fields: kind {self.kind!r} takes its events as they are")
            wrong = [f for f in self.fields.declared() if f not in d.mapped]
            if wrong:
                raise ValueError(
                    f"fields: {', '.join(wrong)} not a field of kind {self.kind!r} (its "
                    f"fields: {', '.join(d.mapped)})"
                )
        if self.labels is not None and (self.fields is not None or self.format != "json"):
            raise ValueError("labels (delayed labels) takes JSON events in the clicks shape: "
                             "no fields: or format: avro with it yet")  # fmt: skip
        if self.format == "avro" and not d.mapped:
            raise ValueError(f"format: avro needs a built-in kind, not {self.kind!r}")
        return self

    def wire(self) -> dict[str, Any] | None:
        """The format and mapping for the decoder (plain data: an ingest worker's too);
        None: JSON in the kind's own shape."""
        if self.format == "json" and self.fields is None:
            return None
        return {
            "format": self.format,
            "fields": self.fields.spec() if self.fields is not None else None,
            "avro": self.avro.spec() if self.avro is not None else None,
        }

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
