"""The ``challenger`` drift action: a fresh model learns beside the champion.

From a drift on, every batch trains both (each scored before it learns: both losses
are prequential, on the same events). After ``window`` examples, the challenger is
promoted when its mean loss over the last ``window`` examples is below the champion's
by more than ``margin`` (relative); if it has not won after ``patience`` examples it is
dropped. A new drift while a race runs restarts it with a new challenger.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
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
        self.pooled = False  # replicas: decisions from every replica's losses, in rounds
        self._local: tuple[int, float, float] = (0, 0.0, 0.0)

    @property
    def active(self) -> bool:
        return self.challenger is not None

    def start(self) -> None:
        self.challenger = self.spawn()
        self.seen = 0
        self._champion.clear()
        self._challenger.clear()
        self._local = (0, 0.0, 0.0)

    def _push(self, q: deque[tuple[int, float]], n: int, loss_sum: float) -> None:
        q.append((int(n), float(loss_sum)))
        while sum(n for n, _ in q) - q[0][0] >= self.window:
            q.popleft()

    @staticmethod
    def _mean(q: deque[tuple[int, float]]) -> float:
        n = sum(k for k, _ in q)
        return sum(s for _, s in q) / n if n else float("nan")

    def step(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: np.ndarray,
        champion_losses: np.ndarray,
        *,
        keys: Any = None,
        reduce: Any = None,
    ) -> tuple[str, Learner | None] | None:
        """Train the challenger on the batch the champion just learned from.

        Returns ``("promoted", learner)`` when the challenger wins (it becomes the
        champion), ``("dropped", None)`` when it runs out of patience, else None.
        ``keys``: each row's key (``by_key`` models). ``reduce``: replicas in
        ``allreduce`` mode sync its gradients like the champion's.

        Replicas (``pooled``): the losses are only collected here; every round pools
        all replicas' (:meth:`take_local`, :meth:`pool`), rank 0 decides
        (:meth:`verdict`) and every replica applies it (:meth:`settle`).
        """
        if self.challenger is None:
            return None
        kw: dict[str, Any] = {}
        if keys is not None:
            kw["keys"] = keys
        if reduce is not None:
            kw["reduce"] = reduce
        res = self.challenger.step(inputs, targets, **kw)
        if res.skipped:  # a refused batch counts for neither
            return None
        n = int(res.losses.size)
        if self.pooled:
            self._local = (self._local[0] + n, self._local[1] + float(champion_losses.sum()),
                           self._local[2] + float(res.losses.sum()))  # fmt: skip
            return None
        self.pool([(n, float(champion_losses.sum()), float(res.losses.sum()))])
        return self.settle(self.verdict())

    def take_local(self) -> tuple[int, float, float]:
        """Replicas: (examples, champion's and challenger's loss sums) since the last call."""
        out, self._local = self._local, (0, 0.0, 0.0)
        return out

    def pool(self, parts: Sequence[tuple[int, float, float]]) -> None:
        """Add (examples, champion loss sum, challenger loss sum) parts to the windows
        (replicas: every replica's, in rank order, so the windows match everywhere)."""
        if self.challenger is None:
            return
        for n, champ, chall in parts:
            if n:
                self._push(self._champion, n, champ)
                self._push(self._challenger, n, chall)
                self.seen += int(n)

    def verdict(self) -> str | None:
        """PROMOTED, DROPPED or None (the race goes on), from the windows."""
        if self.challenger is None:
            return None
        if self.seen >= self.window:
            champ, chall = self._mean(self._champion), self._mean(self._challenger)
            if chall < champ * (1.0 - self.margin):
                return PROMOTED
        return DROPPED if self.seen >= self.patience else None

    def settle(self, verdict: str | None) -> tuple[str, Learner | None] | None:
        """End the race as ``verdict`` says: (PROMOTED, the winner) or (DROPPED, None)."""
        if verdict is None or self.challenger is None:
            return None
        winner, self.challenger = self.challenger, None
        if verdict == PROMOTED:
            self.promotions += 1
            return PROMOTED, winner
        self.drops += 1
        return DROPPED, None

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
