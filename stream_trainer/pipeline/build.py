"""A pipeline's parts, built from its settings: featurizer and decoder, learner, drift
monitors and adaptation policy. Bad settings become one ConfigError naming the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch

from stream_trainer import domains
from stream_trainer.config import Settings
from stream_trainer.domains.decoders import batch_decoder
from stream_trainer.drift import AdaptationPolicy, DriftMonitor, InputDriftMonitor
from stream_trainer.errors import ConfigError
from stream_trainer.learner import Learner
from stream_trainer.learner.keyed import KeyedLearner
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.pipeline_config import PipelineSettings


def output_flag(p: PipelineSettings) -> str | None:
    """The featurizer column that selects the output records (None: every record)."""
    return None if p.outputs == "all" else domains.get(p.kind).flag


def output_topic(p: PipelineSettings) -> str | None:
    if p.output_topic:
        return p.output_topic
    return domains.get(p.kind).default_output_topic(p.topics)


def shard_root(settings: Settings, spec: PipelineSettings) -> Path:
    """Where a ``by_key`` pipeline's shards keep their checkpoints (one folder each)."""
    return settings.checkpoint.dir / spec.name / "shards"


# kind, channels, max bytes, and the wire settings (PipelineSettings.wire)
DecoderSpec = tuple[str, tuple[str, ...], int, dict[str, Any] | None]


def decoder_spec(spec: PipelineSettings, featurizer: Any) -> DecoderSpec:
    """What an ingest worker needs to build the same decoder."""
    channels = domains.get(spec.kind).decoder_channels(featurizer)
    return spec.kind, tuple(channels), spec.max_event_bytes, spec.wire()


Decode = Callable[..., list[Any]]  # (values, timestamps=None) -> events or Rejected


def featurizer_and_decoder(spec: PipelineSettings) -> tuple[Any, Decode, DecoderSpec]:
    """The featurizer, the decoder of a whole poll's values (domains/decoders.py), and what an
    ingest worker needs to build the same decoder."""
    featurizer = build_featurizer(spec.kind, spec.featurizer)
    kind, channels, max_bytes, wire = what = decoder_spec(spec, featurizer)
    decode = batch_decoder(kind, channels=channels, max_bytes=max_bytes, wire=wire)
    return featurizer, decode, what


def learner_factory(
    settings: Settings, spec: PipelineSettings, featurizer: Any, device: torch.device | str
) -> Callable[[], Learner]:
    o = spec.optimizer
    graphs = settings.cuda_graphs and torch.device(device).type == "cuda"

    def make() -> Learner:
        return Learner(
            build_model(spec.kind, spec.model, featurizer),
            featurizer.task,
            optimizer=o.name,
            lr=o.lr,
            weight_decay=o.weight_decay,
            grad_clip_norm=o.grad_clip_norm,
            device=device,
            sparse_embeddings=o.sparse_embeddings,
            embedding_optimizer=o.embedding_optimizer,
            embedding_lr=o.embedding_lr,
            fixed_batch=spec.batch.max_size if graphs else None,
            cuda_graphs=graphs,
            bf16=settings.bf16,
        )

    return make


def learner(
    settings: Settings, spec: PipelineSettings, make: Callable[[], Learner], models_dir: Path
) -> Learner | KeyedLearner:
    """One shared learner, or (``by_key``) one small learner per key."""
    try:
        if spec.partitioning == "by_key":
            return KeyedLearner(make, models_dir, spec.max_models, lr=spec.optimizer.lr,
                                keep=settings.checkpoint.keep)  # fmt: skip
        return make()
    except ValueError as err:
        raise ConfigError(f"pipeline {spec.name}: {err}") from None


class _Signal(TypedDict):
    """The block signal's settings, which both drift monitors take."""

    block: int
    warmup: int
    half_life: float


def monitors(spec: PipelineSettings) -> tuple[DriftMonitor | None, InputDriftMonitor | None]:
    """The loss's drift monitor and the inputs' (either may be off)."""
    d = spec.drift
    signal = _Signal(block=d.block, warmup=d.warmup_blocks, half_life=d.reference_half_life)
    try:
        loss = DriftMonitor(d.detector, d.params, **signal) if d.detector != "none" else None
    except ValueError as err:
        raise ConfigError(f"pipeline {spec.name}: drift: {err}") from None
    return loss, InputDriftMonitor(**signal) if d.input else None


def policy(spec: PipelineSettings, spawn: Callable[[], Any]) -> AdaptationPolicy:
    d = spec.drift
    try:
        return AdaptationPolicy(
            d.actions,
            d.boost_factor,
            d.boost_updates,
            spawn=spawn,
            challenger={
                "window": d.challenger_window,
                "margin": d.challenger_margin,
                "patience": d.challenger_patience,
            },
        )
    except ValueError as err:
        raise ConfigError(f"pipeline {spec.name}: drift: {err}") from None
