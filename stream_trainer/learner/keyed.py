"""``partitioning: by_key``: a small model per key (a symbol, a sensor), sharded with the
Kafka partitions, needing no sync between replicas.

A key's events all land in one partition (producers key their records), so the state of
one partition — its featurizer, the models of its keys, its offsets and ledger — is a
*shard* that moves as a whole when the consumer group rebalances. :class:`ShardedPipeline`
keeps one :class:`~stream_trainer.pipeline.core.Pipeline` per assigned partition, each with
its own checkpoint directory under ``<checkpoint.dir>/<pipeline>/shards/``; a replica
that takes a partition over restores that shard from the shared checkpoint directory.

:class:`KeyedLearner` holds a shard's models with a bound on memory: at most
``max_models`` per process are resident. A model is written to its own file at a
checkpoint (only the ones that learned since), and the shard's checkpoint names the file
of each key. Only models saved since they last learned are evicted (dropping them loses
nothing: the checkpoint holds them), and reloaded from their file on their next event;
when every resident model has learned since the last checkpoint, the shard checkpoints
early. Exactly-once holds per shard: the checkpoint names model files that hold exactly
the effect of the offsets it records.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stream_trainer.checkpoint.store import fsync_dir, write_atomically
from stream_trainer.learner.prequential import Learner
from stream_trainer.learner.replay import KEY
from stream_trainer.learner.result import StepResult

log = logging.getLogger(__name__)


def _file_name(key: str, version: int, prefix: str = "") -> str:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return f"{prefix}model-{digest}-{version:08d}.pt"


def _by_key(replay: Any) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """Replayed rows (with their keys in the replay buffer's KEY column), per key."""
    if replay is None:
        return {}
    inputs, targets = replay
    keys = inputs.get(KEY)
    if keys is None:
        raise ValueError("replayed rows for by_key models need their keys")
    out = {}
    for key in set(keys.tolist()):
        sel = np.nonzero(keys == key)[0]
        out[key] = ({k: v[sel] for k, v in inputs.items() if k != KEY}, targets[sel])
    return out


class KeyedLearner:
    """One :class:`Learner` per key behind the ``Learner`` interface the pipeline uses."""

    def __init__(
        self,
        factory: Callable[[], Learner],
        directory: Path,
        max_models: int,
        *,
        lr: float,
        keep: int = 3,
        prefix: str = "",
    ) -> None:
        self.factory = factory
        # its files' names start with this: a challenger's (see spawn) never overwrite
        # the champion's, in the one models directory
        self.prefix = prefix
        self.base_lr = lr
        self.dir = directory
        self.max_models = max_models
        self.keep = keep
        self.resident: OrderedDict[str, Learner] = OrderedDict()
        self.dirty: set[str] = set()
        self.files: dict[str, str] = {}  # key -> its file as of the last checkpoint
        self.saved_updates: dict[str, int] = {}
        self.version = 0
        self.saves = 0
        self.superseded: list[tuple[str, int]] = []
        self.lr_multiplier = 1.0
        self.evictions = 0
        self.updates = 0  # applied over the shard's life, all keys (like Learner.updates)
        # files an older release wrote, and how to bring each to today's format as it
        # loads (set by the restore that upgraded the shard's checkpoint)
        self.legacy: set[str] = set()
        self.upgrade: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None

    # ---- what the pipeline reads ------------------------------------------------------
    @property
    def lr(self) -> float:
        return self.base_lr * self.lr_multiplier

    def __len__(self) -> int:
        return len(set(self.files) | set(self.resident))

    @property
    def over_limit(self) -> bool:
        return len(self.resident) > self.max_models

    # ---- models -----------------------------------------------------------------------
    def model(self, key: str) -> Learner:
        learner = self.resident.get(key)
        if learner is not None:
            self.resident.move_to_end(key)
            return learner
        self.evict(self.max_models - 1)  # room first: never the model about to learn
        learner = self.factory()
        if key in self.files:
            # on the host first, as the checkpoint store loads: a file written on a GPU
            # loads on a CPU-only machine, and each tensor then goes where its model's
            # parameter is (the optimizer keeps some state, e.g. ``step``, on the host)
            path = self.dir / self.files[key]
            state = torch.load(path, map_location="cpu", weights_only=True)
            if self.upgrade is not None and self.files[key] in self.legacy:
                state = self.upgrade(state, learner.state_dict())
            learner.load_state_dict(state)
        learner.set_lr_multiplier(self.lr_multiplier)
        self.resident[key] = learner
        return learner

    def evict(self, down_to: int | None = None) -> int:
        """Drop least recently used models that are saved, down to ``down_to`` (default
        ``max_models``) resident ones; models that learned since are kept."""
        target = self.max_models if down_to is None else down_to
        dropped = 0
        for key in list(self.resident):
            if len(self.resident) <= target:
                break
            if key not in self.dirty and key in self.files:
                del self.resident[key]
                dropped += 1
        self.evictions += dropped
        return dropped

    def step(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: np.ndarray,
        replay: Any = None,
        reduce: Any = None,
        keys: Any = None,
    ) -> StepResult:
        """Each key's rows go to its model (test-then-train per model)."""
        n = int(targets.shape[0])
        if keys is None or len(keys) != n:
            raise ValueError("partitioning by_key needs a featurizer that names each row's key")
        rows: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            rows.setdefault(str(k), []).append(i)
        losses = np.empty(n, np.float32)
        model_losses = np.empty(n, np.float32)
        outputs: np.ndarray | None = None
        skipped: list[str] = []
        norms, clipped = [], False
        replayed = _by_key(replay)
        for key, idx_list in rows.items():
            idx = np.asarray(idx_list)
            r = self.model(key).step(
                {k: v[idx] for k, v in inputs.items()}, targets[idx], replayed.get(key)
            )
            losses[idx] = r.losses
            model_losses[idx] = r.losses if r.model_losses is None else r.model_losses
            if outputs is None:
                outputs = np.empty((n, *r.outputs.shape[1:]), r.outputs.dtype)
            outputs[idx] = r.outputs
            if r.skipped:
                skipped.append(r.skipped)
            else:
                self.dirty.add(key)
                self.updates += 1
                norms.append(r.grad_norm)
                clipped = clipped or r.clipped
        assert outputs is not None
        res = StepResult(losses, outputs, model_losses=model_losses)
        res.grad_norm = max(norms) if norms else float("nan")
        res.clipped = clipped
        if len(skipped) == len(rows):  # no model learned: the batch counts as skipped
            res.skipped = skipped[0]
        return res

    # ---- drift actions (on every model this shard holds) ------------------------------
    def reset_optimizer(self) -> None:
        for learner in self.resident.values():
            learner.reset_optimizer()

    def set_lr_multiplier(self, m: float) -> None:
        self.lr_multiplier = m
        for learner in self.resident.values():
            learner.set_lr_multiplier(m)

    def reset_model(self) -> None:
        self.resident.clear()
        self.files.clear()  # every key starts afresh on its next event
        self.saved_updates.clear()
        self.dirty.clear()

    def spawn(self) -> KeyedLearner:
        """A challenger: a fresh model for every key (from its first event in the race),
        its files beside this one's under a prefix of its own."""
        return KeyedLearner(
            self.factory, self.dir, self.max_models, lr=self.base_lr, keep=self.keep,
            prefix=f"c{uuid.uuid4().hex[:8]}-",
        )  # fmt: skip

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Write the models that learned since the last checkpoint to new files; the
        returned manifest names every key's file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.version += 1
        for key in sorted(self.dirty):
            learner = self.resident[key]
            name = _file_name(key, self.version, self.prefix)
            write_atomically(learner.state_dict(), self.dir / name)
            if key in self.files:
                self.superseded.append((self.files[key], self.saves))
            self.files[key] = name
            self.saved_updates[key] = learner.updates
        if self.dirty:
            fsync_dir(self.dir)
        self.dirty.clear()
        return {
            "keys": sorted(self.files),
            "files": [self.files[k] for k in sorted(self.files)],
            "updates": torch.tensor([self.saved_updates[k] for k in sorted(self.files)]),
            "version": self.version,
            "total_updates": self.updates,
            "lr_multiplier": self.lr_multiplier,
            "prefix": self.prefix,
        }

    def saved(self) -> None:
        """The manifest is durable: files superseded ``keep`` checkpoints ago can go."""
        self.saves += 1
        old = [f for f, at in self.superseded if self.saves - at > self.keep]
        self.superseded = [(f, at) for f, at in self.superseded if self.saves - at <= self.keep]
        for f in old:
            try:
                (self.dir / f).unlink()
            except OSError:
                pass
        self.evict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.resident.clear()
        self.dirty.clear()
        keys, files = list(state["keys"]), list(state["files"])
        self.files = dict(zip(keys, files, strict=True))
        self.saved_updates = dict(zip(keys, state["updates"].tolist(), strict=True))
        self.version = int(state["version"])
        self.updates = int(state["total_updates"])
        self.prefix = str(state.get("prefix", ""))
        self.set_lr_multiplier(float(state["lr_multiplier"]))
