"""Kafka producers for dead letters and for predictions / anomaly scores."""

from stream_trainer.sinks.kafka_sink import KafkaSink

__all__ = ["KafkaSink"]
