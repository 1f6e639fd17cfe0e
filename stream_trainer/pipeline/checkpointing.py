"""When and how a pipeline checkpoints: flush -> save -> commit (``commit.py``), at once
(:meth:`Checkpointing.checkpoint`: a revoke, the final stop) or periodically with the file
written on a thread (:meth:`Checkpointing.periodic_checkpoint`), its offsets committed once
it is durable. Mixed into :class:`~stream_trainer.pipeline.core.Pipeline`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.checkpoint.store import snapshot
from stream_trainer.pipeline.commit import commit_offsets, make_durable
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.pipeline.offsets import Offsets
from stream_trainer.pipeline.ports import TP, Sink, Source


class _Write:
    """A periodic checkpoint's file, written on its own thread (flush -> *save* -> commit:
    the commit waits for :meth:`Pipeline.collect_checkpoint`)."""

    def __init__(self, p: Checkpointing, doc: dict[str, Any], offsets: dict[TP, int]) -> None:
        self.offsets = offsets
        self.ok = False
        save = lambda: p.store.save(doc)  # noqa: E731
        self.thread = threading.Thread(
            target=self._run, args=(p.name, p.hooks, save), name=f"checkpoint-{p.name}"
        )
        self.thread.start()

    def _run(self, name: str, hooks: PipelineHooks, save: Callable[[], object]) -> None:
        self.ok = make_durable(name, hooks, None, save)


class Checkpointing:
    """Mixed into :class:`~stream_trainer.pipeline.core.Pipeline`, which owns these parts."""

    name: str
    hooks: PipelineHooks
    clock: Callable[[], float]
    store: CheckpointStore
    offsets: Offsets
    keyed: bool
    learner: Any
    source: Source | None
    sink: Sink | None
    last_checkpoint: float
    _writing: _Write | None

    if TYPE_CHECKING:  # the pipeline's own

        def flush(self) -> None: ...

        def state(self) -> dict[str, Any]: ...

    def checkpoint(self, *, commit: bool = True) -> bool:
        """Train what is pending, then flush -> save -> commit (``commit.py``), here and
        now (after the periodic checkpoint being written, if one is).

        False when the checkpoint had to be postponed; the next attempt comes after
        ``checkpoint.every_seconds``.
        """
        self.collect_checkpoint(wait=True)
        self.flush()
        if not self.offsets.dirty:
            return True
        save = self._save
        ok = make_durable(self.name, self.hooks, self.sink, save)
        self.last_checkpoint = self.clock()
        if not ok:
            return False
        self.offsets.dirty = False
        if commit:
            commit_offsets(self.source, self.offsets.next, self.name)
        return True

    def periodic_checkpoint(self) -> bool:
        """The loop's checkpoint, every ``checkpoint.every_seconds``: the same flush ->
        save -> commit, but only the copy of the state stops training (``snapshot``;
        ``scripts/checkpoint_cpu.py`` times it against the save); the file is written and
        fsynced on a thread and its offsets committed by :meth:`collect_checkpoint` once
        it is durable. While the last one is still being written (a slow disk), the next
        waits for it off the loop's thread: training never does. Per-key learners save as
        they go (their models' files): in place."""
        if self.keyed:
            return self.checkpoint()
        if self._writing is not None:  # (collected by a later step; due again then)
            return True
        self.flush()
        self.last_checkpoint = self.clock()
        if not self.offsets.dirty:
            return True
        if not make_durable(self.name, self.hooks, self.sink, None):  # outputs first
            return False
        doc, offsets = snapshot(self.state()), dict(self.offsets.next)
        self.offsets.dirty = False
        self._writing = _Write(self, doc, offsets)
        return True

    def collect_checkpoint(self, *, wait: bool = False) -> None:
        """Once the periodic checkpoint's file is durable, commit its offsets (on the
        loop's thread: the consumer's); if it could not be written, what it held is
        saved again by the next one."""
        w = self._writing
        if w is None or (not wait and w.thread.is_alive()):
            return
        w.thread.join()
        self._writing = None
        if not w.ok:
            self.offsets.dirty = True
            return
        commit_offsets(self.source, w.offsets, self.name)

    def _save(self) -> object:
        path = self.store.save(self.state())
        if self.keyed:
            self.learner.saved()
        return path
