"""An online mixture of the model and the trivial experts: what the pipeline scores,
emits and serves. Pure numpy.

Binary and multiclass tasks: the Bayesian mixture of the experts' probabilities (weights
proportional to prior x likelihood), whose log loss is at most ``ln(1 / prior_i)`` nats above expert
``i``'s over the whole stream, whatever the stream. Regressions: exponential weights on
the squared loss at rate ``1 / (2 m)``, where ``m`` is the best expert's mean squared
error so far — the Gaussian-likelihood counterpart, free of the targets' scale — and the
prediction is the weighted mean (squared loss is convex: never worse than the weighted
experts).

The prior puts almost all of the mass on the trivial baselines ``evaluate`` holds us to:
the model (and any expert that is not one of them) starts at ``MODEL_PRIOR``. Where the
model never wins, the mixture's log loss is then at most ``ln(1 / (1 - MODEL_PRIOR))``
(0.001 nats) above the baselines' over the whole stream, however long; where it wins,
the mixture pays ``ln(1 / MODEL_PRIOR)`` (6.9 nats, a few events' loss) once to follow it.

The losses are not forgotten. Forgetting them (a half-life) would let the mixture follow
a change of the best expert, but it also pulls the weights back to the prior all the
time: a model about as good as the baseline keeps about its prior weight forever, at a
cost of up to ``prior / (e (1 - gamma))`` nats per event that never shrinks relative to
the stream (half-life 5,000 events, model prior 0.05: up to 1.0002 x the constant rate's
log loss on ``evaluate --scenario rare-clicks``). A model that goes bad is the drift
policy's to replace (a reset or a challenger starts again from the running baseline).

Each event is weighted with the losses of the events before it only, and its own loss
joins the weights after it was scored (test, then train), also inside a batch:
vectorised, any batch size gives the same weights.

>>> m = Mixture("binary", ("model", "constant"))
>>> probs = np.array([[0.9, 0.5]] * 4)
>>> mixed, losses = m.step(probs, np.ones(4))
>>> [round(float(p), 4) for p in mixed]
[0.5004, 0.5007, 0.5013, 0.5023]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

EPS = 1e-7
# The prior weight of the model, and of any expert that is not one of the trivial
# baselines; those share the rest. See the module's docstring for what it costs.
MODEL_PRIOR = 1e-3


def prior(names: Sequence[str], candidates: Sequence[str] = ()) -> np.ndarray:
    """Prior weights of ``names`` (the model first): ``MODEL_PRIOR`` each for the model
    and the ``candidates``, the rest shared by the trivial baselines.

    >>> prior(("model", "zero", "last")).tolist()
    [0.001, 0.4995, 0.4995]
    """
    small = np.array([i == 0 or n in candidates for i, n in enumerate(names)])
    if small.all():
        return np.full(len(names), 1.0 / len(names))
    out = np.where(small, MODEL_PRIOR, 0.0)
    return np.where(small, out, (1.0 - out.sum()) / (~small).sum())


class Mixture:
    def __init__(self, task: str, names: Sequence[str], *, candidates: Sequence[str] = ()) -> None:
        if task not in ("binary", "multiclass", "regression"):
            raise ValueError(f"task must be 'binary', 'multiclass' or 'regression', not {task!r}")
        self.task = task
        self.names = tuple(names)
        self.log_prior = np.log(prior(self.names, candidates))
        self.losses = np.zeros(len(self.names))  # loss sums per expert
        self.count = 0.0  # events

    def _log_weights(self, losses: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Unnormalised log weights from loss sums ``[rows, K]`` over ``count`` events."""
        if self.task != "regression":  # log losses: Bayes
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
        if self.task == "multiclass":  # preds [rows, K, classes]: each expert's p(class)
            yi = targets.astype(np.int64).reshape(-1, 1, 1)
            picked = np.take_along_axis(preds, np.broadcast_to(yi, (*preds.shape[:2], 1)), 2)
            return -np.log(np.clip(picked[..., 0], EPS, 1.0))
        err = preds - targets.reshape(preds.shape[0], 1, *preds.shape[2:])
        return (err**2).reshape(preds.shape[0], preds.shape[1], -1).mean(axis=2)

    def _mixed_loss(self, mixed: np.ndarray, targets: np.ndarray) -> np.ndarray:
        if self.task == "binary":
            p = np.clip(mixed, EPS, 1.0 - EPS)
            return -(targets * np.log(p) + (1.0 - targets) * np.log1p(-p))
        if self.task == "multiclass":
            y = targets.astype(np.int64).reshape(-1, 1)
            return -np.log(np.clip(np.take_along_axis(mixed, y, 1)[:, 0], EPS, 1.0))
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
        # the sums before each row: the earlier batches', then this one's earlier rows
        before = self.losses + np.cumsum(ell, axis=0) - ell
        counts = self.count + np.arange(n, dtype=np.float64)
        self.losses = self.losses + ell.sum(axis=0)
        self.count += n
        w = self._normalise(self._log_weights(before, counts))
        mixed = self._mix(preds, w)
        return mixed, self._mixed_loss(mixed, targets)

    def reset_model(self) -> None:
        """A fresh model (``reset_model``, a challenger) takes the model's place: it
        starts level with the best trivial expert, held back by its prior only, not by
        the loss the model it replaces ran up (losses are never forgotten here)."""
        self.losses[0] = self.losses[1:].min() if len(self.losses) > 1 else 0.0

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
