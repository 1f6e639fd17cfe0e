"""Resolve a pipeline's featurizer and model: its domain's own (stream_trainer.domains),
with the pipeline's parameters, or the user's by ``pkg.module:attr`` path; checked."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from stream_trainer import domains
from stream_trainer.errors import PluginError
from stream_trainer.features.base import Featurizer

TASKS = ("binary", "multiclass", "regression")  # (the learner's; it imports torch)

if TYPE_CHECKING:
    from torch import nn


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


def _needs_path(kind: str, what: str, example: str) -> PluginError:
    return PluginError(f"kind {kind!r} has no built-in {what}: give an import path {example!r}")


def build_featurizer(kind: str, spec: str | Mapping[str, Any]) -> Featurizer:
    """The pipeline's featurizer: ``spec`` is an import path, or its domain's parameters."""
    factory = domains.get(kind).featurizer
    if isinstance(spec, str):
        obj = _call(import_path(spec, "featurizer"), f"featurizer {spec}")
    elif factory is None:
        raise _needs_path(kind, "featurizer", "pkg.module:Class")
    else:
        obj = _call(factory, f"{kind} featurizer", **dict(spec))
    if not isinstance(obj, Featurizer) or obj.task not in TASKS:
        raise PluginError(
            f"featurizer for {kind!r} must define task ('binary'|'multiclass'|'regression'), "
            "input_spec, featurize, state_dict and load_state_dict"
        )
    return obj


def build_model(kind: str, spec: str | Mapping[str, Any], featurizer: Featurizer) -> nn.Module:
    """The pipeline's model for ``featurizer``'s inputs: an import path, or its domain's
    model with these parameters."""
    factory = domains.get(kind).model
    if isinstance(spec, str):
        model = _call(
            import_path(spec, "model factory"), f"model {spec}", dict(featurizer.input_spec)
        )
    elif factory is None:
        raise _needs_path(kind, "model", "pkg.module:factory")
    else:
        model = _call(factory, f"{kind} model", dict(featurizer.input_spec), **dict(spec))
    from torch import nn

    if not isinstance(model, nn.Module):
        raise PluginError(
            f"model factory for {kind!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
