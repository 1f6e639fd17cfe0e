"""A pipeline's checkpoint document: everything a restart needs, in one dict.

Model and optimizers (and the replay buffer), featurizer, drift monitors, policy (a
racing challenger too), next offsets, ledger, duplicate window, counters. Restoring a
document that does not fit the pipeline's config is one clear error.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, Protocol

from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.checkpoint.store import check_keys
from stream_trainer.checkpoint.versions import (
    FORMAT_VERSION,
    Context,
    UnknownFormat,
    not_carried,
    upgrade,
    upgrade_learner,
)
from stream_trainer.drift import AdaptationPolicy, DriftMonitor, InputDriftMonitor
from stream_trainer.errors import StreamTrainerError
from stream_trainer.events.dedup import Deduper
from stream_trainer.learner.replay import ReplayBuffer
from stream_trainer.pipeline import reshape
from stream_trainer.pipeline.joiner import Joiner
from stream_trainer.pipeline.offsets import Offsets, fmt_offsets
from stream_trainer.pipeline_config import PipelineSettings

log = logging.getLogger(__name__)


class Stateful(Protocol):
    """What a checkpoint document holds of a pipeline (core.py's ``Pipeline``): declared
    here, so that this module never imports the pipeline it saves."""

    name: str
    spec: PipelineSettings
    store: CheckpointStore
    learner: Any
    featurizer: Any
    replay: ReplayBuffer | None
    monitor: DriftMonitor | None
    input_monitor: InputDriftMonitor | None
    policy: AdaptationPolicy
    offsets: Offsets
    dedup: Deduper
    counters: dict[str, int]
    smoothed_loss: float
    joiner: Joiner | None


def document(p: Stateful) -> dict[str, Any]:
    replay = p.replay.state_dict() if p.replay is not None else {}
    return {
        "kind": p.spec.kind,
        # the pipeline's settings as written (JSON): what built the model, for export and
        # for a restore to tell a config change from a code change
        "settings": json.dumps(p.spec.model_dump(mode="json"), sort_keys=True),
        "learner": {**p.learner.state_dict(), "replay": replay},
        "featurizer": p.featurizer.state_dict(),
        "drift": {
            **(p.monitor.state_dict() if p.monitor is not None else {}),
            "input": p.input_monitor.state_dict() if p.input_monitor else {},
        },
        "policy": p.policy.state_dict(),
        **p.offsets.state(),
        "dedup": p.dedup.state_dict(),
        "counters": {**p.counters, "smoothed_loss": p.smoothed_loss},
        **({"joiner": p.joiner.state_dict()} if p.joiner is not None else {}),
        # a model of the config's shape racing the restored one (pipeline/reshape.py)
        "reshape": reshape.state(p),
    }


def load(p: Stateful, doc: Mapping[str, Any]) -> None:
    """Restore ``doc`` into ``p``, upgraded first when an older release wrote it."""
    try:
        doc, path = upgrade(doc, Context(p.spec.kind, document(p)))
        check_keys(doc)
    except (KeyError, ValueError, UnknownFormat) as err:
        raise StreamTrainerError(
            f"pipeline {p.name}: checkpoint in {p.store.dir} cannot be read by this "
            f"release ({str(err)[:300]}); move the checkpoint directory away to start fresh"
        ) from None
    if path:
        log.info(
            "checkpoint upgraded",
            extra={
                "pipeline": p.name,
                "from_format": path[0],
                "to_format": FORMAT_VERSION,
                "written_by": doc["package_version"],
                "not_carried": not_carried(path) or "nothing",
            },
        )
    if path and hasattr(p.learner, "legacy"):  # by_key: its models' files, as they load
        kind, version = p.spec.kind, path[0]
        p.learner.upgrade = lambda state, fresh: upgrade_learner(state, version, kind, fresh)
    reshape.begin(p, doc)  # the config's model shape differs: the checkpoint's is champion
    afresh = _afresh(p, doc)
    try:
        p.learner.load_state_dict(doc["learner"])
        if p.replay is not None and doc["learner"].get("replay"):
            p.replay.load_state_dict(doc["learner"]["replay"])
        p.featurizer.load_state_dict(doc["featurizer"])
        if p.monitor is not None and doc["drift"].get("detector"):
            p.monitor.load_state_dict(doc["drift"])
        if p.input_monitor is not None and doc["drift"].get("input"):
            p.input_monitor.load_state_dict(doc["drift"]["input"])
        if path and hasattr(p.learner, "legacy"):
            p.learner.legacy = set(p.learner.files.values())
        p.policy.load_state_dict(doc["policy"])
        if doc["dedup"]:
            p.dedup.load_state_dict(doc["dedup"])
        p.offsets.load(doc)
        if p.joiner is not None and doc.get("joiner"):
            p.joiner.load_state_dict(doc["joiner"])
    except (KeyError, ValueError, RuntimeError) as err:
        raise StreamTrainerError(
            f"pipeline {p.name}: checkpoint in {p.store.dir} does not match the "
            f"config ({str(err)[:300]}); restore the old config, or move the "
            "checkpoint directory away to start fresh"
            + (
                " (this file is from before 0.2.0 and does not record its settings: run "
                "once with the old config, then change it, and a model of the new shape "
                "races the restored one)"
                if path
                else ""
            )
        ) from None
    if afresh:
        log.warning(
            "config changed since the checkpoint; kept all else",
            extra={"pipeline": p.name, "afresh": "; ".join(afresh)},
        )
    reshape.resume(p, doc)
    p.counters.update({k: int(v) for k, v in doc["counters"].items() if k in p.counters})
    p.smoothed_loss = float(doc["counters"].get("smoothed_loss", math.nan))
    log.info(
        "resumed from checkpoint",
        extra={
            "pipeline": p.name,
            "offsets": fmt_offsets(p.offsets.next),
            "trained": p.counters["trained"],
            "model_version": p.learner.updates,
        },
    )


def _afresh(p: Stateful, doc: dict[str, Any]) -> list[str]:
    """Parts of ``doc`` that a config change made meaningless, replaced in ``doc`` by the
    pipeline's own fresh ones (so the strict load keeps everything else): a new drift
    detector starts its watch afresh; an optimizer of other parts (a 0.2.0 file written
    with dense embedding gradients has no ``sparse`` part) starts its moments afresh under
    the carried weights. What they are."""
    out = []
    drift = doc["drift"]
    monitor = p.monitor
    if monitor is not None and drift.get("detector") not in (None, monitor.detector_name):
        out.append(f"drift detector ({drift['detector']} -> {monitor.detector_name})")
        doc["drift"] = {**monitor.state_dict(), "input": drift.get("input", {})}
    learner = doc["learner"]
    parts = getattr(getattr(p.learner, "optimizer", None), "parts", None)
    saved = learner.get("optimizer")
    if isinstance(parts, dict) and isinstance(saved, Mapping) and set(saved) != set(parts):
        out.append(f"optimizer state (parts {sorted(saved)} -> {sorted(parts)})")
        doc["learner"] = {**learner, "optimizer": p.learner.optimizer.state_dict()}
    return out
