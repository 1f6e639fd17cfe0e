"""Every kafka-python import of the daemon: the consumer (source), the producer for
dead letters and outputs (sink), admin (topics), TLS/SASL settings."""

from stream_trainer.edges.sink import KafkaSink
from stream_trainer.edges.source import KafkaSource

__all__ = ["KafkaSink", "KafkaSource"]
