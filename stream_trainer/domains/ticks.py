"""Ticks: forecast a symbol's next return from a window of its last ones."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from stream_trainer.domains.base import Domain, Evaluation
from stream_trainer.events.decode import ticks_schema

if TYPE_CHECKING:
    from torch import nn

    from stream_trainer.features.base import Featurizer


def featurizer(**params: Any) -> Featurizer:
    """Windows of returns per symbol, with the pipeline's parameters."""
    from stream_trainer.features.ticks import TickFeaturizer

    return TickFeaturizer(**params)


def model(input_spec: Mapping[str, Any], **params: Any) -> nn.Module:
    """A forecaster of the next return from the window and the symbol."""
    from stream_trainer.models.forecast import build_ticks

    return build_ticks(dict(input_spec), **params)


def generate(**params: Any) -> Iterator[dict[str, Any]]:
    """The synthetic tick stream (producers/generators.py)."""
    from stream_trainer.producers.generators import ticks

    return ticks(**params)


DOMAIN = Domain(
    name="ticks",
    schema=ticks_schema,
    featurizer=featurizer,
    model=model,
    generator=generate,
    key_field="symbol",
    quality="direction",
    evaluation=Evaluation(
        task="regression",
        baselines="series",
        trivial="returns",
        feature_key="symbol",
        scalar=True,
    ),
)
