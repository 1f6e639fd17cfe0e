"""stream-trainer: online continual learning on Kafka event streams."""

__version__ = "0.1.0"
