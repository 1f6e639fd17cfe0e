"""Atomic, strict, weights-only checkpoints holding model state and next offsets."""

from stream_trainer.checkpoint.store import CheckpointStore

__all__ = ["CheckpointStore"]
