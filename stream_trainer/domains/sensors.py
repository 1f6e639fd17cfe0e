"""Sensors: forecast each sensor's next reading; the surprising ones are anomalies,
published to ``<first topic>.anomalies`` unless the pipeline names an output topic
(every reading's score with ``outputs: all``)."""

from __future__ import annotations

from stream_trainer.domains.base import Domain, Evaluation, lazy
from stream_trainer.events.decode import sensors_schema

DOMAIN = Domain(
    name="sensors",
    schema=sensors_schema,
    fast=lazy("stream_trainer.events.fast:sensors_fast"),
    featurizer=lazy("stream_trainer.features.sensors:SensorFeaturizer"),
    model=lazy("stream_trainer.models.forecast:build_sensors"),
    generator=lazy("stream_trainer.producers.generators:sensors"),
    key_field="sensor_id",
    quality="regression",
    output_suffix="anomalies",
    flag="anomaly",  # <topic>.anomalies carries the anomalies (outputs: all, every score)
    channels_from_featurizer=True,
    evaluation=Evaluation(
        task="regression",
        baselines="series",
        trivial="last_value",
        feature_key="sensor",
        channels=True,
        anomaly_rate=True,
    ),
    mapped=("ts", "sensor_id", "values"),
)
