"""What a checkpoint file holds, for a person (``stream-trainer checkpoint inspect``):
the format and package that wrote it, the pipeline and kind, where it stands in the log,
how much it has learned, and its tensors' sizes. Reads any known format version as it is,
without upgrading it (the upgrade needs the pipeline's config)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from stream_trainer.checkpoint.store import CheckpointStore
from stream_trainer.checkpoint.versions import FORMAT_VERSION, UNKNOWN_PACKAGE, on_disk_version
from stream_trainer.errors import StreamTrainerError


def find(path: Path) -> list[Path]:
    """The checkpoint files ``path`` names: a file; a pipeline's directory (its newest);
    a checkpoint root (each pipeline's newest)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise StreamTrainerError(f"{path}: no such file or directory")
    own = CheckpointStore(path.parent, path.name).files()
    if own:
        return own[-1:]
    found = [fs[-1] for d in sorted(path.iterdir()) if d.is_dir()
             if (fs := CheckpointStore(path, d.name).files())]  # fmt: skip
    if not found:
        raise StreamTrainerError(f"{path}: no checkpoint files (ckpt-*.pt) here or below")
    return found


def summarize(path: Path) -> dict[str, Any]:
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
        version = on_disk_version(doc)
    except Exception as err:  # corrupt, truncated, not ours: say so, not a traceback
        raise StreamTrainerError(
            f"{path}: not a readable checkpoint ({type(err).__name__}: {err})"[:300]
        ) from None
    learner = doc.get("learner", {})
    model = learner.get("model", {})
    tensors = {k: list(v.shape) for k, v in model.items() if isinstance(v, torch.Tensor)}
    params = sum(int(v.numel()) for v in model.values() if isinstance(v, torch.Tensor))
    size = sum(_bytes(v) for v in doc.values())
    joiner = doc.get("joiner") or {}
    reshape = doc.get("reshape") or {}  # a model of the config's new shape racing this one
    racing = None
    if isinstance(reshape, Mapping) and reshape:
        settings = json.loads(reshape["settings"])
        racing = {"settings": {k: settings.get(k) for k in ("model", "featurizer")},
                  "events_raced": int(reshape["race"].get("seen", 0))}  # fmt: skip
    return {
        "path": str(path),
        "format_version": version,
        "format_version_today": FORMAT_VERSION,
        "upgrade_needed": version < FORMAT_VERSION,
        "package_version": doc.get("package_version", UNKNOWN_PACKAGE),
        "pipeline": doc.get("pipeline"),
        "kind": doc.get("kind", "not recorded"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(doc.get("created", 0)))),
        "offsets": {k: int(v) for k, v in sorted(doc.get("offsets", {}).items())},
        "ledger": ledger_ranges(doc) if doc.get("ledger") else {},
        "model_version": int(learner.get("updates", 0)),
        "events_trained": int(doc.get("counters", {}).get("trained", 0)),
        "parameters": params,
        "tensors": tensors,
        "optimizers": sorted(learner.get("optimizer", {})),
        "labels_pending": len(joiner.get("pending_ids", [])) if isinstance(joiner, Mapping) else 0,
        "racing": racing,
        "bytes_in_tensors": size,
        "file_bytes": path.stat().st_size,
    }


def ledger_ranges(doc: Mapping[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """The ledger's ranges of offsets applied, per partition: ``{"t:0": [(0, 500)]}``."""
    out = {}
    for key, flat in doc["ledger"].get("ranges", {}).items():
        v = flat.tolist()
        out[key] = list(zip(v[0::2], v[1::2], strict=True))
    return out


def _bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return int(obj.numel() * obj.element_size())
    if isinstance(obj, Mapping):
        return sum(_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_bytes(v) for v in obj)
    return 0


def render(s: Mapping[str, Any]) -> str:
    """The summary as a few aligned lines."""
    fmt = f"{s['format_version']}" + (
        f" (this release reads it, upgrading to {s['format_version_today']} at restore)"
        if s["upgrade_needed"] else ""
    )  # fmt: skip
    rows = [
        ("file", f"{s['path']} ({s['file_bytes'] / 1e6:.2f} MB)"),
        ("format", fmt),
        ("written by", f"stream-trainer {s['package_version']}, {s['created']}"),
        ("pipeline", f"{s['pipeline']} (kind {s['kind']})"),
        ("offsets", ", ".join(f"{k}={v:,}" for k, v in s["offsets"].items()) or "none"),
        (
            "ledger",
            "; ".join(
                f"{k} " + " ".join(f"[{a:,}, {b:,})" for a, b in r) for k, r in s["ledger"].items()
            )
            or "empty",
        ),  # fmt: skip
        ("model version", f"{s['model_version']:,} updates, {s['events_trained']:,} events"),
        ("model", f"{s['parameters']:,} parameters; optimizers: {', '.join(s['optimizers'])}"),
    ]
    if s.get("racing"):
        r = s["racing"]
        rows.append(("racing", f"a model of {json.dumps(r['settings'], sort_keys=True)} races "
                     f"this one ({r['events_raced']:,} events raced)"))  # fmt: skip
    if s["labels_pending"]:
        rows.append(("labels", f"{s['labels_pending']:,} impressions waiting"))
    rows += [(f"  {k}", "x".join(map(str, v)) or "scalar") for k, v in s["tensors"].items()]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
