"""What a domain is: one kind of event stream and everything the daemon needs to learn
from it. Pure: the factories import torch (featurizers, models) or numpy (generators)
when called, not when the domain is declared."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from stream_trainer.features.base import Featurizer

Check = Callable[[dict[str, Any]], dict[str, Any]]  # a parsed JSON object -> the event


def lazy(path: str) -> Callable[..., Any]:
    """``"pkg.module:name"`` as a callable that imports it on its first call, so that
    declaring a domain imports no torch.

    >>> lazy("math:hypot")(3, 4)
    5.0
    """
    module, _, name = path.partition(":")
    target: list[Callable[..., Any]] = []

    def call(*args: Any, **kwargs: Any) -> Any:
        if not target:
            target.append(getattr(importlib.import_module(module), name))
        return target[0](*args, **kwargs)

    call.__qualname__ = call.__name__ = name
    call.__doc__ = f"{path}, imported when first called."
    return call


@dataclass(frozen=True)
class Evaluation:
    """How ``evaluate`` treats a domain's streams.

    >>> Evaluation(task="regression", baselines="series", trivial="returns").scalar
    False
    """

    task: str  # "binary" or "regression" (or "config": the pipeline's featurizer says)
    # "clicks" (River classifiers, Vowpal Wabbit), "series" (regressors) or "tabular"
    # (River's models on the declared fields)
    baselines: str
    trivial: str | None = None  # series: "returns" (of a price) or "last_value" baselines
    key_field: str | None = None  # the event field that names a series (the domain's key)
    feature_key: str | None = None  # our featurizer's input that holds the series' key
    channels: bool = False  # readings per channel: the pipeline takes the stream's channels
    scalar: bool = False  # one number per prediction (else a vector, one per channel)
    anomaly_rate: bool = False  # our pipeline flags anomalies: report the rate of them


@dataclass(frozen=True)
class Domain:
    """One kind of stream (``kind:`` in a pipeline's settings).

    >>> d = Domain("demo", schema=lambda channels: dict, featurizer=None, model=None)
    >>> d.quality_profile("binary"), d.quality_profile("regression")
    ('binary', 'regression')
    >>> d.default_output_topic(["readings"]) is None
    True
    """

    name: str
    # the event schema: decoder channels -> the check of one parsed object
    # (events/decode.py frames it: size, UTF-8, JSON, an object)
    schema: Callable[[Sequence[str]], Check]
    # featurizer params (the pipeline's ``featurizer:`` mapping) -> a Featurizer;
    # None: the pipeline names its own by import path (custom)
    featurizer: Callable[..., Featurizer] | None
    # (featurizer.input_spec, **the pipeline's ``model:`` mapping) -> a torch module
    model: Callable[..., nn.Module] | None
    # the synthetic stream for ``produce`` and ``evaluate`` (None: none)
    generator: Callable[..., Iterator[dict[str, Any]]] | None = None
    # the same schema as msgspec types (events/fast.py): decoder channels -> (decoder,
    # convert); only speed, never a result, differs. None: ``schema`` alone (custom)
    fast: Callable[[Sequence[str]], Any] | None = None
    # the event field that keys its Kafka messages (partitions follow it)
    key_field: str | None = None
    # the quality profile when the featurizer's task is a regression: "direction"
    # (forecasts with a sign) or "regression"; binary tasks are always "binary"
    quality: str = "regression"
    # the quality profile of classification tasks (binary, multiclass)
    class_quality: str = "binary"
    # the default output topic is "<first input topic>.<output_suffix>" (None: no output)
    output_suffix: str | None = None
    # the featurizer's ``annotate`` column that flags events (sensors: "anomaly"); a kind
    # with one publishes only the flagged events by default (``outputs: flagged``)
    flag: str | None = None
    # ``partitioning: by_key`` can keep a model per key (clicks: no key per model)
    by_key: bool = True
    # the decoder reads exactly the featurizer's ``channels`` (sensors)
    channels_from_featurizer: bool = False
    # how ``evaluate`` treats its streams (None: not offered by evaluate)
    evaluation: Evaluation | None = None
    # the canonical event's fields a pipeline's ``fields:`` may map to the user's paths
    # (events/mapping.py), and those of them an event may lack; () : no mapping (custom)
    mapped: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    # the kind's defaults of a pipeline's sections, below what the pipeline sets
    # (``{"batch": {"max_size": 8}}``); the rest are the sections' own defaults
    defaults: Mapping[str, Mapping[str, Any]] | None = None

    @property
    def builtin(self) -> bool:
        """Ships its own featurizer and model (custom needs import paths)."""
        return self.featurizer is not None and self.model is not None

    def decoder_channels(self, featurizer: Any) -> tuple[str, ...]:
        """The channels the decoder requires, from the pipeline's featurizer."""
        if not self.channels_from_featurizer:
            return ()
        return tuple(getattr(featurizer, "channels", ()))

    def default_output_topic(self, topics: Sequence[str]) -> str | None:
        """Where predictions go when the pipeline names no ``output_topic``."""
        return f"{topics[0]}.{self.output_suffix}" if self.output_suffix else None

    def quality_profile(self, task: str) -> str:
        """Which quality metrics fit this domain's pipelines (see learner/quality.py)."""
        return self.class_quality if task in ("binary", "multiclass") else self.quality
