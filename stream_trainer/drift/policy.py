"""Adaptation on drift: reset optimizer moments, boost the learning rate (decaying back),
reset the model to its initial weights, or race a fresh challenger against it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import numpy as np

ACTIONS = ("reset_optimizer", "boost_lr", "reset_model", "challenger")


class Adaptable(Protocol):
    def reset_optimizer(self) -> None: ...

    def set_lr_multiplier(self, m: float) -> None: ...

    def reset_model(self) -> None: ...


class AdaptationPolicy:
    """Apply ``actions`` on drift; ``after_update`` decays a boost linearly over ``boost_updates``.

    >>> class L:
    ...     m = 1.0
    ...     def reset_optimizer(self): pass
    ...     def reset_model(self): pass
    ...     def set_lr_multiplier(self, m): self.m = m
    >>> l, p = L(), AdaptationPolicy(["boost_lr"], boost_factor=3.0, boost_updates=2)
    >>> p.on_drift(l); l.m
    3.0
    >>> p.after_update(l); l.m
    2.0
    >>> p.after_update(l); l.m
    1.0
    """

    def __init__(
        self,
        actions: Iterable[str],
        boost_factor: float = 3.0,
        boost_updates: int = 200,
        *,
        spawn: Callable[[], Any] | None = None,
        challenger: Mapping[str, Any] | None = None,
    ) -> None:
        self.actions = tuple(actions)
        unknown = set(self.actions) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown drift actions {sorted(unknown)}")
        self.boost_factor = boost_factor
        self.boost_updates = boost_updates
        self.boost_left = 0
        self.race = None
        if "challenger" in self.actions:
            from stream_trainer.drift.challenger import ChallengerRace

            if spawn is None:
                raise ValueError("the challenger action needs a way to spawn a fresh learner")
            self.race = ChallengerRace(spawn, **dict(challenger or {}))

    def on_drift(self, learner: Adaptable) -> None:
        if "reset_optimizer" in self.actions:
            learner.reset_optimizer()
        if "reset_model" in self.actions:
            learner.reset_model()
        if "boost_lr" in self.actions:
            self.boost_left = self.boost_updates
            learner.set_lr_multiplier(self.boost_factor)
        if self.race is not None:
            self.race.start()

    def compete(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: np.ndarray,
        losses: np.ndarray,
        **kw: Any,
    ) -> tuple[str, Any] | None:
        """Let a running challenger learn from the champion's batch; see ChallengerRace
        (``kw``: its ``keys`` and ``reduce``)."""
        if self.race is None:
            return None
        return self.race.step(inputs, targets, losses, **kw)

    def after_update(self, learner: Adaptable) -> None:
        if self.boost_left <= 0:
            return
        self.boost_left -= 1
        frac = self.boost_left / self.boost_updates
        learner.set_lr_multiplier(1.0 + (self.boost_factor - 1.0) * frac)

    def state_dict(self) -> dict[str, Any]:
        race = self.race.state_dict() if self.race is not None else {}
        return {"boost_left": self.boost_left, "challenger": race}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.boost_left = int(state["boost_left"])
        if self.race is not None and state.get("challenger"):
            self.race.load_state_dict(state["challenger"])
