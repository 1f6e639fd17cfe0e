"""Kafka consumer wrapper: polling, seeking to checkpointed offsets, commits, lag."""

from stream_trainer.source.kafka_source import KafkaSource, Record

__all__ = ["KafkaSource", "Record"]
