"""Ticks: forecast a symbol's next return from a window of its last ones."""

from __future__ import annotations

from stream_trainer.domains.base import Domain, Evaluation, lazy
from stream_trainer.events.decode import ticks_schema

DOMAIN = Domain(
    name="ticks",
    schema=ticks_schema,
    fast=lazy("stream_trainer.events.fast:ticks_fast"),
    featurizer=lazy("stream_trainer.features.ticks:TickFeaturizer"),
    model=lazy("stream_trainer.models.forecast:build_ticks"),
    generator=lazy("stream_trainer.producers.generators:ticks"),
    key_field="symbol",
    quality="direction",
    evaluation=Evaluation(
        task="regression",
        baselines="series",
        trivial="returns",
        feature_key="symbol",
        scalar=True,
    ),
    mapped=("ts", "symbol", "price", "volume"),
    optional=("volume",),
)
