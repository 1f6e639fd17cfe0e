"""The ``challenger`` drift action: a fresh model learns beside the champion.

From a drift on, every batch trains both (each scored before it learns: both losses
are prequential, on the same events). After ``window`` examples, the challenger is
promoted when its mean loss over the last ``window`` examples is below the champion's
by more than ``margin`` (relative); if it has not won after ``patience`` examples it is
dropped. A new drift while a race runs restarts it with a new challenger.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from stream_trainer.learner import Learner

PROMOTED, DROPPED = "promoted", "dropped"


class ChallengerRace:
    def __init__(
        self,
        spawn: Callable[[], Learner],
        *,
        window: int = 2000,
        margin: float = 0.02,
        patience: int = 20000,
    ) -> None:
        if window < 1 or patience < window:
            raise ValueError("challenger: need 1 <= window <= patience")
        self.spawn = spawn
        self.window, self.margin, self.patience = window, margin, patience
        self.challenger: Learner | None = None
        self.seen = 0
        self._champion: deque[tuple[int, float]] = deque()  # (examples, loss sum) per batch
        self._challenger: deque[tuple[int, float]] = deque()
        self.promotions = 0
        self.drops = 0

    @property
    def active(self) -> bool:
        return self.challenger is not None

    def start(self) -> None:
        self.challenger = self.spawn()
        self.seen = 0
        self._champion.clear()
        self._challenger.clear()

    def _push(self, q: deque[tuple[int, float]], losses: np.ndarray) -> None:
        q.append((int(losses.size), float(losses.sum())))
        while sum(n for n, _ in q) - q[0][0] >= self.window:
            q.popleft()

    @staticmethod
    def _mean(q: deque[tuple[int, float]]) -> float:
        n = sum(k for k, _ in q)
        return sum(s for _, s in q) / n if n else float("nan")

    def step(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray, champion_losses: np.ndarray
    ) -> tuple[str, Learner | None] | None:
        """Train the challenger on the batch the champion just learned from.

        Returns ``("promoted", learner)`` when the challenger wins (it becomes the
        champion), ``("dropped", None)`` when it runs out of patience, else None.
        """
        if self.challenger is None:
            return None
        res = self.challenger.step(inputs, targets)
        if res.skipped:  # a refused batch counts for neither
            return None
        self._push(self._champion, champion_losses)
        self._push(self._challenger, res.losses)
        self.seen += int(res.losses.size)
        if self.seen >= self.window:
            champ, chall = self._mean(self._champion), self._mean(self._challenger)
            if chall < champ * (1.0 - self.margin):
                winner, self.challenger = self.challenger, None
                self.promotions += 1
                return PROMOTED, winner
        if self.seen >= self.patience:
            self.challenger = None
            self.drops += 1
            return DROPPED, None
        return None

    def state_dict(self) -> dict[str, Any]:
        def pairs(q: deque[tuple[int, float]]) -> torch.Tensor:
            return torch.tensor(list(q), dtype=torch.float64).reshape(-1, 2)

        return {
            "active": self.active,
            "seen": self.seen,
            "promotions": self.promotions,
            "drops": self.drops,
            "champion": pairs(self._champion),
            "challenger_losses": pairs(self._challenger),
            "learner": self.challenger.state_dict() if self.challenger is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.promotions, self.drops = int(state["promotions"]), int(state["drops"])
        self.challenger = None
        if state["active"]:
            self.start()
            assert self.challenger is not None
            self.challenger.load_state_dict(state["learner"])
            self.seen = int(state["seen"])
            for q, key in ((self._champion, "champion"), (self._challenger, "challenger_losses")):
                q.extend((int(n), float(s)) for n, s in state[key].tolist())
