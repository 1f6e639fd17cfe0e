"""An online mixture of the model and the trivial experts: what the pipeline scores,
emits and serves. Pure numpy.

Binary tasks: the Bayesian mixture of the experts' probabilities (weights proportional
to prior x likelihood), whose log loss is at most ``ln(1 / prior_i)`` nats above expert
``i``'s over the whole stream. Regressions: exponential weights on the squared loss
at rate ``1 / (2 m)``, where ``m`` is the best expert's running mean squared error —
the Gaussian-likelihood counterpart, free of the targets' scale — and the prediction is
the weighted mean (squared loss is convex: never worse than the weighted experts).

The losses behind the weights are forgotten with a half-life (``half_life`` events), so
the mixture follows the best expert when that changes (a drift, a model that overtakes
the baseline) instead of holding on to the past. Each event is weighted with the losses
of the events before it only, and its own loss joins the weights after it was scored
(test, then train), also inside a batch: vectorised, any batch size gives the same
weights.

>>> m = Mixture("binary", ("model", "constant"))
>>> probs = np.array([[0.9, 0.5]] * 4)
>>> mixed, losses = m.step(probs, np.ones(4))
>>> [round(float(p), 3) for p in mixed]
[0.52, 0.535, 0.558, 0.594]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from stream_trainer.models.baseline import _gamma, discounted_prefix

HALF_LIFE = 5_000  # events
# The model's prior weight; the trivial experts share the rest. The trivial experts are
# trusted until the model earns its weight: the mixture's log loss is at most
# ln(1 / 0.95) = 0.05 nats above theirs over a stream, and ln 20 = 3 nats above the
# model's (a few events' worth, where the model is the better one).
MODEL_PRIOR = 0.05  # the model's prior weight; the trivial experts share the rest
EPS = 1e-7


class Mixture:
    def __init__(
        self,
        task: str,
        names: Sequence[str],
        *,
        half_life: float = HALF_LIFE,
        model_prior: float = MODEL_PRIOR,
    ) -> None:
        if task not in ("binary", "regression"):
            raise ValueError(f"task must be 'binary' or 'regression', not {task!r}")
        self.task = task
        self.names = tuple(names)
        k = len(self.names)
        prior = np.full(k, (1.0 - model_prior) / max(1, k - 1))
        prior[0] = model_prior if k > 1 else 1.0
        self.log_prior = np.log(prior)
        self.gamma = _gamma(half_life)
        self.losses = np.zeros(k)  # discounted loss sums per expert
        self.count = 0.0  # discounted events

    def _log_weights(self, losses: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Unnormalised log weights from discounted loss sums ``[rows, K]``."""
        if self.task == "binary":
            return self.log_prior - losses
        c = count[:, None]
        # losses / (2 m), m = the best expert's mean loss = its loss sum / count
        best = np.maximum(losses.min(axis=1, keepdims=True), 1e-12 * c + 1e-300)
        return self.log_prior - 0.5 * c * losses / best

    @staticmethod
    def _normalise(logw: np.ndarray) -> np.ndarray:
        w = np.exp(logw - logw.max(axis=-1, keepdims=True))
        return w / w.sum(axis=-1, keepdims=True)

    def _expert_losses(self, preds: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Per-event loss of each expert: ``[rows, K]``."""
        if self.task == "binary":
            p = np.clip(preds, EPS, 1.0 - EPS)
            y = targets.reshape(-1, 1)
            return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
        err = preds - targets.reshape(preds.shape[0], 1, *preds.shape[2:])
        return (err**2).reshape(preds.shape[0], preds.shape[1], -1).mean(axis=2)

    def _mixed_loss(self, mixed: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if self.task == "binary":
            p = np.clip(mixed, EPS, 1.0 - EPS)
            return -(targets * np.log(p) + (1.0 - targets) * np.log1p(-p))
        err = (mixed - targets.reshape(mixed.shape)) ** 2
        return err.reshape(err.shape[0], -1).mean(axis=1)

    def _mix(self, preds: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.einsum("nk,nk...->n...", w, preds)

    def step(self, preds: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mix ``preds`` (``[rows, K, ...]``: probabilities, or values in model units),
        each row with the weights the rows before it left; then learn the rows' losses.
        Returns the mixed predictions and their losses."""
        preds = np.asarray(preds, np.float64)
        targets = np.asarray(targets, np.float64)
        n = preds.shape[0]
        ell = self._expert_losses(preds, targets)
        before, self.losses = discounted_prefix(ell, self.losses, self.gamma)
        counts, self.count = discounted_prefix(np.ones(n), self.count, self.gamma)
        self.count = float(self.count)
        w = self._normalise(self._log_weights(before, counts))
        mixed = self._mix(preds, w)
        return mixed, self._mixed_loss(mixed, targets)

    def weights(self) -> np.ndarray:
        """The weights the next event gets."""
        logw = self._log_weights(self.losses[None], np.array([self.count]))
        return self._normalise(logw)[0]

    def predict(self, preds: np.ndarray) -> np.ndarray:
        """Mix ``preds`` with the current weights, learning nothing (serving)."""
        preds = np.asarray(preds, np.float64)
        w = np.broadcast_to(self.weights(), preds.shape[:2])
        return self._mix(preds, w)

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": torch.from_numpy(self.losses.copy()),
            "count": torch.tensor(self.count, dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        losses = np.asarray(state["losses"], np.float64)
        if losses.shape != self.losses.shape:
            raise ValueError(
                f"mixture state has {losses.shape[0]} experts, this head has "
                f"{len(self.names)} ({', '.join(self.names)})"
            )
        self.losses = losses.copy()
        self.count = float(state["count"])
