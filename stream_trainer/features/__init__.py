"""Stateful, checkpointable featurizers: validated events -> fixed-shape arrays. Pure."""

from stream_trainer.features.base import FeatureBatch, Featurizer, KeyedSlots, RunningMoments

__all__ = ["FeatureBatch", "Featurizer", "KeyedSlots", "RunningMoments"]
