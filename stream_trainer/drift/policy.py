"""Adaptation on drift: reset optimizer moments and/or boost the learning rate, decaying back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol


class Adaptable(Protocol):
    def reset_optimizer(self) -> None: ...

    def set_lr_multiplier(self, m: float) -> None: ...


class AdaptationPolicy:
    """Apply ``actions`` on drift; ``after_update`` decays a boost linearly over ``boost_updates``.

    >>> class L:
    ...     m = 1.0
    ...     def reset_optimizer(self): pass
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
        self, actions: Iterable[str], boost_factor: float = 3.0, boost_updates: int = 200
    ) -> None:
        self.actions = tuple(actions)
        unknown = set(self.actions) - {"reset_optimizer", "boost_lr"}
        if unknown:
            raise ValueError(f"unknown drift actions {sorted(unknown)}")
        self.boost_factor = boost_factor
        self.boost_updates = boost_updates
        self.boost_left = 0

    def on_drift(self, learner: Adaptable) -> None:
        if "reset_optimizer" in self.actions:
            learner.reset_optimizer()
        if "boost_lr" in self.actions:
            self.boost_left = self.boost_updates
            learner.set_lr_multiplier(self.boost_factor)

    def after_update(self, learner: Adaptable) -> None:
        if self.boost_left <= 0:
            return
        self.boost_left -= 1
        frac = self.boost_left / self.boost_updates
        learner.set_lr_multiplier(1.0 + (self.boost_factor - 1.0) * frac)

    def state_dict(self) -> dict[str, Any]:
        return {"boost_left": self.boost_left}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.boost_left = int(state["boost_left"])
