"""Tabular: any JSON event with declared (or discovered) numeric and categorical fields
by dotted path, and a binary, multiclass or regression target (features/tabular.py
lists the settings). The general kind: a user's own stream with only a config."""

from __future__ import annotations

from stream_trainer.domains.base import Domain, Evaluation, lazy
from stream_trainer.events.tabular import tabular_schema

DOMAIN = Domain(
    name="tabular",
    schema=tabular_schema,
    fast=lazy("stream_trainer.events.tabular:tabular_fast"),
    featurizer=lazy("stream_trainer.features.tabular:TabularFeaturizer"),
    model=lazy("stream_trainer.models.tabular:build"),
    key_field=None,
    quality="errors",
    class_quality="classification",
    channels_from_featurizer=True,
    evaluation=Evaluation(task="config", baselines="tabular"),
    # small batches, a higher learning rate and a replay of past rows: a table of a few
    # thousand rows needs many updates per event (scripts/river_datasets.py measured:
    # Phishing 0.862 accuracy with batches of 4 alone, 0.892 with these; batches of
    # 256: ImageSegments 0.361, 0.890 with these). Under a consumer
    # lag of more than 500 events batches grow to 1,024 (backlog_max_size), with at most
    # 32 replayed rows each. The price is throughput: a step costs ~5-10 ms on this
    # CPU whatever its size, and small batches stay small while polls come back short
    # (make bench's tabular row: well below the bare client, see the CHANGELOG).
    defaults={
        "batch": {"max_size": 4, "backlog_lag": 500},
        "optimizer": {"lr": 0.01},
        "replay": {"capacity": 2000, "fraction": 2.0, "max_rows": 32},
    },
)
