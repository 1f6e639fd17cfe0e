"""The trainer publishes a copy of its weights; requests read only that copy.

Why a copy and not the live model: a request must never wait for a training step, and a
step must never wait for a request. The trainer copies its weights into a spare module
every ``every_s`` seconds (at the end of a step, in its own thread: ~2 ms for the
default click model's 10 MB) and swaps a reference; a request takes the current copy
(one short lock, held for a counter increment, never during a forward pass) and scores
with it however long it takes. A copy in use by a request is never written: the next
publication takes another spare (at most ``max_copies``; when every one is busy, the
publication waits for the next step).

How old a served score's weights can be: updates are published at the first step at
least ``every_s`` after the previous publication, so an update reaches serving within
``every_s`` plus one step (plus the copy), as long as the trainer is stepping; the
``train_to_serve`` age reported per publication is exactly that, for the oldest update
it carries. When the stream goes quiet, the trainer's loop still polls (every
``IDLE_POLL_S``) and :meth:`Publisher.catch_up` publishes what the last steps left: the
newest weights reach serving within ``every_s`` plus one idle poll of the last step,
whether or not more events come.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

OnPublish = Callable[[int, float], None]  # (model version, train-to-serve age in seconds)


@dataclass(eq=False)
class ServedModel:
    """One published copy of the weights: read-only while any request holds it."""

    module: nn.Module
    baseline: Any = None  # the learner's running baseline and mixture, as published
    mixture: Any = None  # (what is scored and emitted: the mixture of the model and them)
    version: int = -1
    task: str = "binary"
    published_at: float = field(default=0.0)  # the publisher's clock
    users: int = 0
    # the featurizer settings it scores with, when not the pipeline's config's (a model
    # of the checkpoint's shape racing one of the config's: pipeline/reshape.py)
    features: Any = None
    # whether the weights are still those published (None: always, they are never
    # rewritten while held; a serving process's shared slot can be: see process.py)
    check: Callable[[], bool] | None = None

    def intact(self) -> bool:
        return self.check is None or self.check()

    def signature(self) -> list[tuple[str, tuple[int, ...]]]:
        return [(k, tuple(v.shape)) for k, v in self.module.state_dict().items()]


def _frozen_copy(model: nn.Module) -> nn.Module:
    """A module like ``model``, without gradients, in eval mode (never trained)."""
    grads = {id(p): p.grad for p in model.parameters()}
    for p in model.parameters():  # deepcopy would copy the gradients too
        p.grad = None
    try:
        out = copy.deepcopy(model)
    finally:
        for p in model.parameters():
            p.grad = grads[id(p)]
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval()


def _settled(module: nn.Module) -> None:
    """Wait until a copy into ``module`` on a GPU is done: it was queued behind the
    optimizer's step, asynchronously, and a reader on another thread (and stream) must
    never score half-written weights. Once per publication; nothing on the CPU."""
    p = next(module.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.current_stream(p.device).synchronize()


class Publisher:
    """The trainer calls :meth:`updated` after each step; readers use :meth:`use`."""

    def __init__(
        self,
        every_s: float = 0.5,
        *,
        max_copies: int = 4,
        clock: Callable[[], float] = time.monotonic,
        on_publish: OnPublish | None = None,
        mirror: Callable[[ServedModel], None] | None = None,
        local: bool = True,
    ) -> None:
        self.every_s, self.max_copies, self.clock = every_s, max_copies, clock
        self.on_publish = on_publish
        self.mirror = mirror  # also hands each publication on (to a serving process)
        # whether readers in this process use() the copies; False (only a mirror reads):
        # no copy here, the mirror copies from the live model, on the trainer's thread
        self.local = local
        self._lock = threading.Lock()
        self._pool: list[ServedModel] = []
        self.current: ServedModel | None = None
        self._first_unpublished: float | None = None  # when the oldest unpublished update ran
        self._last_publish = -float("inf")
        self.published = 0
        self.skipped_busy = 0  # publications postponed: every spare copy was in use

    # ---- the trainer's side ------------------------------------------------------------
    def updated(self, learner: Any) -> bool:
        """After a step: publish when the last publication is ``every_s`` old (or there
        is none yet). True when this call published."""
        now = self.clock()
        if self._first_unpublished is None:
            self._first_unpublished = now
        return self._publish_due(learner, now)

    def catch_up(self, learner: Any) -> bool:
        """Between steps, on the trainer's thread (each poll, an idle one too): publish
        the updates the last steps left unpublished, once their period is up. Without
        it, a burst's last updates wait for the next event, however long that takes.
        True when this call published."""
        if self._first_unpublished is None:
            return False
        return self._publish_due(learner, self.clock())

    def _publish_due(self, learner: Any, now: float) -> bool:
        if self.published and now - self._last_publish < self.every_s:
            return False
        return self.publish(learner, now)

    def publish(self, learner: Any, now: float | None = None) -> bool:
        now = self.clock() if now is None else now
        if self.local:
            spare = self._spare(learner.model)
            if spare is None:
                self.skipped_busy += 1
                return False
            with torch.no_grad():
                src = learner.model.state_dict()
                for k, dst in spare.module.state_dict().items():
                    dst.copy_(src[k])
            _settled(spare.module)
        else:  # the live model, read by the mirror now, between two steps
            spare = ServedModel(learner.model)
        spare.baseline = copy.deepcopy(getattr(learner, "baseline", None))
        spare.mixture = copy.deepcopy(getattr(learner, "mixture", None))
        spare.version, spare.task, spare.published_at = int(learner.updates), learner.task, now
        spare.features = getattr(learner, "features", None)
        if self.local:
            with self._lock:
                self.current = spare
        age = 0.0 if self._first_unpublished is None else max(0.0, now - self._first_unpublished)
        self._first_unpublished = None
        self._last_publish = now
        self.published += 1
        if self.mirror is not None:
            self.mirror(spare)
        if self.on_publish is not None:
            self.on_publish(spare.version, age)
        return True

    def _spare(self, model: nn.Module) -> ServedModel | None:
        """A pooled copy that no request holds and that is not current (a new one while
        the pool is below ``max_copies``); None when all are busy."""
        with self._lock:
            for m in self._pool:
                if m is not self.current and m.users == 0:
                    break
            else:
                m = None
        if m is not None and m.signature() != [
            (k, tuple(v.shape)) for k, v in model.state_dict().items()
        ]:  # a new architecture (a promoted challenger of another shape): start over
            with self._lock:
                self._pool = [p for p in self._pool if p is self.current]
            m = None
        if m is None:
            if len(self._pool) >= self.max_copies:
                return None
            m = ServedModel(_frozen_copy(model))
            with self._lock:
                self._pool.append(m)
        return m

    # ---- the readers' side -------------------------------------------------------------
    @contextmanager
    def use(self) -> Iterator[ServedModel | None]:
        """The current copy, held (never rewritten) until the block ends; None before
        the first publication."""
        with self._lock:
            m = self.current
            if m is not None:
                m.users += 1
        try:
            yield m
        finally:
            if m is not None:
                with self._lock:
                    m.users -= 1

    def age_s(self) -> float:
        """Seconds since the current copy was published (inf before the first)."""
        m = self.current
        return float("inf") if m is None else self.clock() - m.published_at
