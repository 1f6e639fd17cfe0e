"""What a learner's step returns (:class:`StepResult`) and why a guard can refuse an
update (the skip reasons). Below prequential.py and sync.py, which both fill them in."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SKIP_NON_FINITE_LOSS = "non_finite_loss"
SKIP_NON_FINITE_GRAD = "non_finite_grad"
SKIP_REASONS = (SKIP_NON_FINITE_LOSS, SKIP_NON_FINITE_GRAD)


@dataclass
class StepResult:
    """Per-example prequential loss and output (computed before the update): the
    mixture's where the head has one (what is scored and emitted), else the model's."""

    losses: np.ndarray
    outputs: np.ndarray
    skipped: str | None = None
    grad_norm: float = math.nan
    clipped: bool = False  # the gradient norm exceeded grad_clip_norm and was scaled down
    model_losses: np.ndarray | None = None  # the model's own (None: no mixture)
    weights: dict[str, float] | None = None  # the mixture's weights after the batch

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean()) if self.losses.size else math.nan
