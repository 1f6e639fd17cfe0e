"""Resolve a pipeline's featurizer and model: built-in presets or ``pkg.module:attr`` paths."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from stream_trainer.errors import PluginError
from stream_trainer.features.base import Featurizer
from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.features.sensors import SensorFeaturizer
from stream_trainer.features.ticks import TickFeaturizer
from stream_trainer.models import clicks, forecast

FEATURIZERS: dict[str, Callable[..., Featurizer]] = {
    "clicks": ClickFeaturizer,
    "ticks": TickFeaturizer,
    "sensors": SensorFeaturizer,
}
MODELS: dict[str, Callable[..., nn.Module]] = {
    "clicks": clicks.build,
    "ticks": forecast.build_ticks,
    "sensors": forecast.build_sensors,
}


def import_path(path: str, what: str) -> Any:
    """Import ``pkg.module:attr``, with one clear message when that fails."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what} {path!r} must look like 'pkg.module:name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise PluginError(
            f"cannot import {what} module {module_name!r}: {err} "
            "(is it installed, or on PYTHONPATH?)"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PluginError(f"{what} {path!r}: module {module_name!r} has no {attr!r}") from None


def _call(factory: Callable[..., Any], what: str, *args: Any, **params: Any) -> Any:
    try:
        return factory(*args, **params)
    except TypeError as err:
        raise PluginError(f"{what}: bad parameters {sorted(params)}: {err}") from None


def build_featurizer(kind: str, spec: str | Mapping[str, Any]) -> Featurizer:
    if isinstance(spec, str):
        obj = _call(import_path(spec, "featurizer"), f"featurizer {spec}")
    else:
        obj = _call(FEATURIZERS[kind], f"{kind} featurizer", **dict(spec))
    if not isinstance(obj, Featurizer) or obj.task not in ("binary", "regression"):
        raise PluginError(
            f"featurizer for {kind!r} must define task ('binary'|'regression'), "
            "input_spec, featurize, state_dict and load_state_dict"
        )
    return obj


def build_model(kind: str, spec: str | Mapping[str, Any], featurizer: Featurizer) -> nn.Module:
    if isinstance(spec, str):
        model = _call(
            import_path(spec, "model factory"), f"model {spec}", dict(featurizer.input_spec)
        )
    else:
        model = _call(MODELS[kind], f"{kind} model", dict(featurizer.input_spec), **dict(spec))
    if not isinstance(model, nn.Module):
        raise PluginError(
            f"model factory for {kind!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
