"""Per-event output records: the prequential prediction, target and loss of each
trained event, in raw units, plus what the featurizer adds (anomaly scores). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.features.base import FeatureBatch
from stream_trainer.pipeline.ports import Record


def prediction_records(
    records: Sequence[Record],
    events: Sequence[dict[str, Any]],
    fb: FeatureBatch,
    outputs: np.ndarray,
    losses: np.ndarray,
    extra: Mapping[str, np.ndarray],
    model_version: int,
    only: np.ndarray | None = None,
) -> list[tuple[str | None, dict[str, Any]]]:
    """(key, document) for each example of ``fb`` (with ``only``, a boolean column: for
    those where it is true); ``outputs`` are in model units; ``extra`` holds
    per-example columns the featurizer adds (anomaly scores)."""
    pred, target = fb.raw_units(outputs)
    out = []
    index = fb.index.tolist()
    for j in range(len(index)) if only is None else np.flatnonzero(only).tolist():
        idx = index[j]
        rec = records[idx]
        key = fb.keys[j] if fb.keys else None
        doc: dict[str, Any] = {
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "ts": events[idx].get("ts"),
            "key": key,
            "prediction": _jsonable(pred[j]),
            "target": _jsonable(target[j]),
            "loss": float(losses[j]),
            "model_version": model_version,
        }
        for name, values in extra.items():
            doc[name] = _jsonable(values[j])
        out.append((key, doc))
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [float(v) for v in x.tolist()]
    if isinstance(x, np.bool_ | bool):
        return bool(x)
    return float(x)
