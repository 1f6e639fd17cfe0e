"""Checkpoint files: ``<dir>/<pipeline>/ckpt-<seq>.pt``, newest last.

Written to a temp file, fsynced, renamed over, and the directory fsynced, so a
crash leaves either the old or the new file, never half of one. Loaded with
``torch.load(weights_only=True)``; an unreadable newest file falls back to the
previous one with a warning. A file of an older format loads as it is: the pipeline
upgrades it (``versions.py``) against its own fresh state before it restores.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_trainer import __version__
from stream_trainer.checkpoint.versions import FORMAT_VERSION, on_disk_version
from stream_trainer.errors import CheckpointError

log = logging.getLogger(__name__)

# the keys of every version (what a file must have to be worth upgrading)
BASE_KEYS = frozenset(
    {
        "format_version",
        "pipeline",
        "created",
        "learner",
        "featurizer",
        "drift",
        "policy",
        "offsets",
        "ledger",
        "dedup",
        "counters",
    }
)
# today's keys: every version's, and what later versions added
KEYS = BASE_KEYS | {"package_version", "kind", "settings", "reshape"}
OPTIONAL_KEYS = frozenset({"joiner"})  # a pipeline with delayed labels: its pending state
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint document that training can go on beside: every tensor
    and array cloned, every dict, list and tuple rebuilt (the rest is immutable).
    ``scripts/checkpoint_cpu.py`` times it against the save, on the click model."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointStore:
    def __init__(self, root: str | os.PathLike[str], pipeline: str, keep: int = 3) -> None:
        self.dir = Path(root) / pipeline
        self.pipeline = pipeline
        self.keep = keep

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        found = sorted((p for p in self.dir.iterdir() if _NAME.match(p.name)), key=lambda p: p.name)
        return found

    def save(self, state: Mapping[str, Any]) -> Path:
        """Write ``state`` (must have exactly :data:`KEYS`) durably; return its path."""
        doc = {
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            "pipeline": self.pipeline,
            "created": time.time(),
            **state,
        }
        check_keys(doc)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            existing = self.files()
            last = _NAME.match(existing[-1].name) if existing else None  # files(): all match
            seq = int(last.group(1)) + 1 if last else 1
            final = self.dir / f"ckpt-{seq:012d}.pt"
        except OSError as err:
            raise _unwritable(self.dir, err) from None
        write_atomically(doc, final)
        fsync_dir(self.dir)
        for old in [*existing, final][: -self.keep]:
            old.unlink(missing_ok=True)
        return final

    def load_latest(self) -> dict[str, Any] | None:
        """Newest readable checkpoint (of any known format version: the caller upgrades
        it), or None when there is none at all."""
        files = self.files()
        for path in reversed(files):
            try:
                doc = torch.load(path, map_location="cpu", weights_only=True)
                if not isinstance(doc, dict):
                    raise ValueError("checkpoint is not a dict")
                on_disk_version(doc)
                if missing := BASE_KEYS - doc.keys():
                    raise ValueError(f"checkpoint keys: missing {sorted(missing)}")
                if doc["pipeline"] != self.pipeline:
                    raise ValueError(f"belongs to pipeline {doc['pipeline']!r}")
                return doc
            except Exception as err:  # corrupt, truncated, foreign: fall back, never crash
                log.warning(
                    "skipping unreadable checkpoint",
                    extra={"path": str(path), "error": f"{type(err).__name__}: {err}"[:200]},
                )
        if files:
            log.warning("no readable checkpoint; starting fresh", extra={"dir": str(self.dir)})
        return None


def write_atomically(obj: Any, final: Path) -> None:
    """``torch.save`` to a temp file, fsync it, rename it over ``final`` (then fsync the
    directory, once for all files written, with :func:`fsync_dir`)."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as err:
        raise _unwritable(final.parent, err) from None


def fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable."""
    try:
        dir_fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise _unwritable(path, err) from None


def _unwritable(path: Path, err: OSError) -> CheckpointError:
    return CheckpointError(
        f"cannot write checkpoint in {path}: {err.strerror}; "
        "check the directory exists, is writable and has space"
    )


def check_keys(doc: Any) -> None:
    """A document of today's format has exactly :data:`KEYS` (and perhaps the optional)."""
    if not isinstance(doc, dict):
        raise ValueError("checkpoint is not a dict")
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format_version {doc.get('format_version')!r} != {FORMAT_VERSION}")
    missing, unknown = KEYS - doc.keys(), doc.keys() - KEYS - OPTIONAL_KEYS
    if missing or unknown:
        raise ValueError(f"checkpoint keys: missing {sorted(missing)}, unknown {sorted(unknown)}")
