"""One forward pass with the pre-update weights gives each example's loss and prediction;
then backward and an optimizer step, unless a guard refuses the update."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SKIP_NON_FINITE_LOSS = "non_finite_loss"
SKIP_NON_FINITE_GRAD = "non_finite_grad"
SKIP_REASONS = (SKIP_NON_FINITE_LOSS, SKIP_NON_FINITE_GRAD)


def pick_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Asking for ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device 'cuda' requested but torch sees no CUDA device; use device: auto or cpu"
        )
    return torch.device(name)


def make_optimizer(params: Any, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class StepResult:
    """Per-example prequential loss and model output (computed before the update)."""

    losses: np.ndarray
    outputs: np.ndarray
    skipped: str | None = None
    grad_norm: float = math.nan
    clipped: bool = False  # the gradient norm exceeded grad_clip_norm and was scaled down

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean()) if self.losses.size else math.nan


class Learner:
    """Owns a model and its optimizer; ``step`` is the only place weights change."""

    def __init__(
        self,
        model: nn.Module,
        task: str,
        *,
        optimizer: str = "adam",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        grad_clip_norm: float | None = 5.0,
        device: torch.device | str = "cpu",
    ) -> None:
        if task not in ("binary", "regression"):
            raise ValueError(f"task must be 'binary' or 'regression', not {task!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.task = task
        self.opt_name, self.base_lr, self.weight_decay = optimizer, lr, weight_decay
        self.grad_clip_norm = grad_clip_norm
        self.lr_multiplier = 1.0
        self.updates = 0
        self.optimizer = make_optimizer(self.model.parameters(), optimizer, lr, weight_decay)

    @property
    def lr(self) -> float:
        return self.base_lr * self.lr_multiplier

    def set_lr_multiplier(self, m: float) -> None:
        self.lr_multiplier = m
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def reset_optimizer(self) -> None:
        """Forget moment estimates (they describe the old regime's gradients)."""
        self.optimizer = make_optimizer(
            self.model.parameters(), self.opt_name, self.lr, self.weight_decay
        )

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {
            k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device, non_blocking=True)
            for k, v in inputs.items()
        }

    def _per_example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(out, y, reduction="none")
        loss = F.mse_loss(out, y, reduction="none")
        return loss.reshape(loss.shape[0], -1).mean(1)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Outputs in model units (probabilities for binary tasks), without learning."""
        with torch.no_grad():
            out = self.model(**self._tensors(inputs))
        return self._to_numpy(out)

    def _to_numpy(self, out: torch.Tensor) -> np.ndarray:
        if self.task == "binary":
            out = torch.sigmoid(out)
        return out.detach().float().cpu().numpy()

    def step(self, inputs: Mapping[str, np.ndarray], targets: np.ndarray) -> StepResult:
        self.model.train()
        x = self._tensors(inputs)
        y = torch.from_numpy(np.ascontiguousarray(targets)).to(self.device, non_blocking=True)
        out = self.model(**x)
        per = self._per_example_loss(out, y)
        loss = per.mean()
        result = StepResult(per.detach().cpu().numpy(), self._to_numpy(out))
        if not torch.isfinite(loss):
            result.skipped = SKIP_NON_FINITE_LOSS
            return result
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.grad_clip_norm if self.grad_clip_norm is not None else math.inf
        norm = float(nn.utils.clip_grad_norm_(params, max_norm))
        result.grad_norm = norm
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            result.skipped = SKIP_NON_FINITE_GRAD
            return result
        result.clipped = norm > max_norm
        self.optimizer.step()
        self.updates += 1
        return result

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "lr_multiplier": self.lr_multiplier,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.set_lr_multiplier(float(state["lr_multiplier"]))
