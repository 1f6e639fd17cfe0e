"""The structure of a checkpoint document: its keys, tensor names, dtypes and shapes.

What ``tests/test_checkpoint_guard.py`` compares against the structure recorded for the
current format version, so that a change to what a checkpoint holds cannot land without
a version bump, a migration and a fixture. Sizes that grow with the stream (the duplicate
window, the ledger, drift histories, pending labels) are recorded by rank, not length;
the model's and optimizers' shapes, which a config fixes, in full. Keys that name data
(partitions ``topic:N``, row ids) collapse into ``*``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# where shapes are fixed by the config (recorded in full)
_FIXED = re.compile(r"^/learner/(model|optimizer/[^/]+/state|baseline|mixture)/")
_DATA_KEY = re.compile(r"^(\d+|[^/]*:\d+)$")


def structure(doc: Mapping[str, Any]) -> dict[str, str]:
    """``{path: what}`` for every leaf of ``doc`` (paths like ``/learner/model/mlp.0.weight``)."""
    out: dict[str, str] = {}
    _walk(doc, "", out)
    return dict(sorted(out.items()))


def _walk(obj: Any, path: str, out: dict[str, str]) -> None:
    if isinstance(obj, Mapping):
        if not obj:
            out[path] = "{}"
        for k, v in obj.items():
            key = str(k)
            fixed = path.startswith("/learner/optimizer/") and "/state" in path
            _walk(v, f"{path}/{key if fixed or not _DATA_KEY.match(key) else '*'}", out)
    elif isinstance(obj, torch.Tensor | np.ndarray):
        dtype = str(obj.dtype).removeprefix("torch.")
        shape = tuple(obj.shape)
        out[path] = (f"tensor {dtype} {list(shape)}" if _FIXED.match(path)
                     else f"tensor {dtype} rank {len(shape)}")  # fmt: skip
    elif isinstance(obj, list | tuple) and obj and all(isinstance(x, Mapping) for x in obj):
        for v in obj:  # (an optimizer's param groups: one structure for all)
            _walk(v, f"{path}[]", out)
    elif isinstance(obj, list | tuple):
        out[path] = type(obj).__name__
    else:
        out[path] = "none" if obj is None else type(obj).__name__
