"""Clicks: did a user click an item, in a context? A binary task on hashed ids."""

from __future__ import annotations

from stream_trainer.domains.base import Domain, Evaluation, lazy
from stream_trainer.events.decode import clicks_schema

DOMAIN = Domain(
    name="clicks",
    schema=clicks_schema,
    fast=lazy("stream_trainer.events.fast:clicks_fast"),
    featurizer=lazy("stream_trainer.features.clicks:ClickFeaturizer"),
    model=lazy("stream_trainer.models.clicks:build"),
    generator=lazy("stream_trainer.producers.generators:clicks"),
    key_field="user_id",
    quality="binary",
    by_key=False,
    evaluation=Evaluation(task="binary", baselines="clicks"),
    mapped=("ts", "user_id", "item_id", "label", "context"),
    optional=("context",),
)
