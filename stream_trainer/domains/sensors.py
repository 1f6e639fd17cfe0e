"""Sensors: forecast each sensor's next reading; the surprising ones are anomalies,
published to ``<first topic>.anomalies`` unless the pipeline names an output topic."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from stream_trainer.domains.base import Domain, Evaluation
from stream_trainer.events.decode import sensors_schema

if TYPE_CHECKING:
    from torch import nn

    from stream_trainer.features.base import Featurizer


def featurizer(**params: Any) -> Featurizer:
    """Windows of readings per sensor and channel, with the pipeline's parameters."""
    from stream_trainer.features.sensors import SensorFeaturizer

    return SensorFeaturizer(**params)


def model(input_spec: Mapping[str, Any], **params: Any) -> nn.Module:
    """A forecaster of every channel's next reading from the window and the sensor."""
    from stream_trainer.models.forecast import build_sensors

    return build_sensors(dict(input_spec), **params)


def generate(**params: Any) -> Iterator[dict[str, Any]]:
    """The synthetic sensor stream (producers/generators.py)."""
    from stream_trainer.producers.generators import sensors

    return sensors(**params)


DOMAIN = Domain(
    name="sensors",
    schema=sensors_schema,
    featurizer=featurizer,
    model=model,
    generator=generate,
    key_field="sensor_id",
    quality="regression",
    output_suffix="anomalies",
    channels_from_featurizer=True,
    evaluation=Evaluation(
        task="regression",
        baselines="series",
        trivial="last_value",
        feature_key="sensor",
        channels=True,
        anomaly_rate=True,
    ),
)
