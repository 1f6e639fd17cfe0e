"""Synthetic event streams with a hidden, learnable truth and injected drift; file replay."""

from stream_trainer.producers.generators import GENERATORS, make_generator

__all__ = ["GENERATORS", "make_generator"]
