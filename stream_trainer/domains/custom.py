"""Custom: the user's own featurizer and model, named by import path in the pipeline's
settings (``featurizer: pkg.module:Class``, ``model: pkg.module:factory``); events are
any JSON object, checked by the featurizer."""

from __future__ import annotations

from stream_trainer.domains.base import Domain
from stream_trainer.events.decode import custom_schema

DOMAIN = Domain(
    name="custom",
    schema=custom_schema,
    featurizer=None,
    model=None,
)
