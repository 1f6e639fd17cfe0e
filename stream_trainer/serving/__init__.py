"""Serving: score events with a pipeline's newest published weights, never mutating its
state. ``snapshot`` (the trainer publishes a copy of its weights), ``scorer`` (decode,
featurize with a featurizer of its own, forward), ``http`` (``POST /predict``) and
``requests`` (``requests_topic`` -> ``predictions_topic``)."""

from stream_trainer.serving.scorer import Scored, Scorer
from stream_trainer.serving.snapshot import Publisher, ServedModel

__all__ = ["Publisher", "Scored", "Scorer", "ServedModel"]
