"""Score events with a pipeline's published weights, without touching the pipeline.

The scorer has its own featurizer instance (same settings as the pipeline's), so a
request never adds to the pipeline's featurizer state, its duplicate window or its
model; it reads only the copy of the weights the trainer published (``snapshot.py``).
A featurizer with per-key state (ticks, sensors: a window of past readings per key)
cannot score one event on its own, so serving is offered for stateless featurizers:
clicks, and custom ones whose class sets ``stateless = True``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec
import numpy as np
import torch

from stream_trainer import domains
from stream_trainer.errors import ConfigError
from stream_trainer.events import Rejected, reasons
from stream_trainer.events.decode import _Reject  # the schema checks' own refusal
from stream_trainer.features.base import is_stateless
from stream_trainer.models.registry import build_featurizer
from stream_trainer.pipeline_config import PipelineSettings
from stream_trainer.serving.snapshot import ServedModel

NOT_READY = "model_not_ready"  # no weights published yet (the trainer has not stepped)
TRIES = 3  # forwards per request when the copy was rewritten under it (process.py)


def serveable(spec: PipelineSettings, featurizer: Any) -> bool:
    return is_stateless(featurizer, spec.kind)


@dataclass
class Scored:
    """One score per event (None where refused), the reasons, the weights' version."""

    scores: list[float | list[float] | None]
    errors: list[tuple[int, Rejected]] = field(default_factory=list)
    version: int = -1


class Weights(Protocol):
    """Where a scorer reads the served weights: the daemon's Publisher (serving on its
    threads) or the serving process's SlotReader."""

    def use(self) -> AbstractContextManager[ServedModel | None]: ...


class Scorer:
    def __init__(self, spec: PipelineSettings, publisher: Weights) -> None:
        self.name, self.publisher = spec.name, publisher
        self.featurizer = build_featurizer(spec.kind, spec.featurizer)
        # a served model of other featurizer settings (a model of the checkpoint's shape,
        # racing the config's: pipeline/reshape.py) is scored with a featurizer of its own
        self.kind, self.features = spec.kind, spec.model_dump(mode="json")["featurizer"]
        self._others: dict[str, Any] = {}
        if not serveable(spec, self.featurizer):
            raise ConfigError(
                f"pipeline {spec.name}: serving needs a stateless featurizer (clicks, or a "
                "custom featurizer class with stateless = True); this one keeps state per "
                "key, so one event cannot be scored on its own"
            )
        d = domains.get(spec.kind)
        channels = d.decoder_channels(self.featurizer)
        self.check = d.schema(channels)
        # the msgspec types of events/fast.py, checked in C: what they refuse, the
        # schema's checks above take again for the reason (as the trainer's decoder does)
        self.fast: tuple[type, Any] | None = None
        if d.fast is not None:
            dec, convert = d.fast(channels)
            self.fast = (dec.type, convert)
        self.needs_label = spec.kind == "clicks"  # the schema wants one: any 0/1 will do
        # a ``fields:`` mapping: requests come in the user's shape too (JSON), less the
        # label; ``ts: kafka`` takes the time of the request
        self.mapped: Any = None
        if spec.fields is not None:
            from stream_trainer.domains.decoders import mapped_check

            unlabelled = {k: v for k, v in spec.fields.spec().items() if k != "label"}
            self.mapped = mapped_check(spec.kind, channels, unlabelled)

    def validate(self, doc: Any) -> dict[str, Any] | Rejected:
        """A request's event as the pipeline would decode it (a label is not needed)."""
        if not isinstance(doc, dict):
            return Rejected(reasons.NOT_OBJECT, f"got {type(doc).__name__}")
        if self.needs_label:
            doc = {**doc, "label": 0}
        if self.mapped is not None:
            try:
                return self.mapped(doc, None)
            except _Reject as rej:
                return rej.rejected
            except RecursionError:
                return Rejected(reasons.TOO_DEEP, "nesting too deep")
        if self.fast is not None:
            typ, convert = self.fast
            try:
                ev = convert(msgspec.convert(doc, typ))
            except (msgspec.ValidationError, RecursionError):
                ev = None
            if ev is not None:
                return ev
        try:
            return self.check(doc)
        except _Reject as rej:
            return rej.rejected
        except RecursionError:
            return Rejected(reasons.TOO_DEEP, "nesting too deep")

    def score(self, docs: Sequence[Any]) -> Scored:
        """Validate, featurize and score ``docs`` (parsed JSON values) in one forward."""
        events: list[dict[str, Any]] = []
        where: list[int] = []
        out = Scored([None] * len(docs))
        for i, doc in enumerate(docs):
            ev = self.validate(doc)
            if isinstance(ev, Rejected):
                out.errors.append((i, ev))
            else:
                events.append(ev)
                where.append(i)
        if not events:
            return out
        fbs: dict[str, Any] = {}
        for _ in range(TRIES):
            with self.publisher.use() as served:
                if served is None:
                    out.errors.extend(
                        (i, Rejected(NOT_READY, "no weights published yet")) for i in where
                    )
                    return out
                try:
                    fb = self._featurize(events, served.features, fbs)
                except Exception as err:  # a user featurizer may fail on odd events
                    why = Rejected(reasons.FEATURIZER_ERROR, repr(err)[:200])
                    out.errors.extend((i, why) for i in where)
                    return out
                preds = self._forward(served, fb.inputs)
                if served.intact():  # else rewritten meanwhile: again, with the newer copy
                    out.version = served.version
                    break
        else:
            out.errors.extend((i, Rejected(NOT_READY, "weights kept changing")) for i in where)
            return out
        preds, _ = fb.raw_units(preds)
        for j, pos in enumerate(fb.index):
            v = preds[j]
            out.scores[where[int(pos)]] = float(v) if np.ndim(v) == 0 else v.tolist()
        return out

    def _featurize(self, events: list[dict[str, Any]], features: Any, done: dict[str, Any]) -> Any:
        """The events' examples for a served model of featurizer settings ``features``
        (None: this scorer's own); ``done``: those made already for this request."""
        key = "" if features is None or features == self.features else json.dumps(features)
        if key not in done:
            if key and key not in self._others:
                self._others = {key: build_featurizer(self.kind, features)}  # (one at a time)
            done[key] = (self._others[key] if key else self.featurizer).featurize(events)
        return done[key]

    @staticmethod
    def _forward(served: ServedModel, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """What the trainer's ``Learner.predict`` gives for these inputs with the
        published weights: the model on top of its running baseline, mixed with the
        trivial experts (where the head has them)."""
        module, rows = served.module, next(iter(inputs.values())).shape[0]
        offsets = experts = None
        if served.baseline is not None:
            offsets, experts = served.baseline.predict(inputs, None, rows)
        device = next(module.parameters()).device
        x = {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            y = module(**x)
            if offsets is not None:
                y = y + torch.from_numpy(offsets.astype(np.float32)).to(device).to(y.dtype)
            if served.task == "binary":
                y = torch.sigmoid(y)
            elif served.task == "multiclass":
                y = torch.softmax(y.float(), -1)
        own = y.float().cpu().numpy()
        if served.mixture is None or experts is None:
            return own
        both = np.concatenate([own.reshape(rows, 1, *experts.shape[2:]), experts], 1)
        return served.mixture.predict(both).astype(own.dtype)
