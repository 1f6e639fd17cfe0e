"""Clicks: did a user click an item, in a context? A binary task on hashed ids."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from stream_trainer.domains.base import Domain, Evaluation
from stream_trainer.events.decode import clicks_schema

if TYPE_CHECKING:
    from torch import nn

    from stream_trainer.features.base import Featurizer


def featurizer(**params: Any) -> Featurizer:
    """Hashed user, item and context features, with the pipeline's parameters."""
    from stream_trainer.features.clicks import ClickFeaturizer

    return ClickFeaturizer(**params)


def model(input_spec: Mapping[str, Any], **params: Any) -> nn.Module:
    """Embeddings of the hashed ids and context, and a small MLP on top."""
    from stream_trainer.models.clicks import build

    return build(dict(input_spec), **params)


def generate(**params: Any) -> Iterator[dict[str, Any]]:
    """The synthetic click stream (producers/generators.py)."""
    from stream_trainer.producers.generators import clicks

    return clicks(**params)


DOMAIN = Domain(
    name="clicks",
    schema=clicks_schema,
    featurizer=featurizer,
    model=model,
    generator=generate,
    key_field="user_id",
    quality="binary",
    by_key=False,
    evaluation=Evaluation(task="binary", baselines="clicks"),
)
