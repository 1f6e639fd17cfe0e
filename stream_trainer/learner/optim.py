"""Optimizers for models whose embeddings are most of the weights.

A step touches a few hundred embedding rows out of hundreds of thousands. Dense Adam
rewrites every row and both moment buffers at every step (`make bench` times the click
model both ways); with sparse embedding gradients only the touched rows move.
So a learner holds two optimizers: one for the embedding tables (part ``sparse``) and
one for the rest (``dense``), behind the small part of the ``torch.optim.Optimizer``
interface the learner uses. The tables keep their optimizer (Adagrad by default) whether
their gradients are sparse (the CPU's default) or dense (a GPU's: fixed shapes, CUDA
graphs): one layout on every device, so a checkpoint moves between CPU and GPU as it is,
and dense Adagrad on a zero gradient row leaves the row and its sum as they are, so
both learn the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

import torch
from torch import nn

DENSE_OPTIMIZERS = ("adam", "adamw", "sgd")
# Per-row adaptive steps suit hashed ids: a rare id's first updates are large, a
# frequent one's settle (Vowpal Wabbit's --adaptive does the same). `make bench` times
# and scores the click model with these defaults beside the old dense Adam step.
DEFAULT_EMBEDDING_OPTIMIZER = "adagrad"
DEFAULT_EMBEDDING_LR = 0.1
SPARSE_OPTIMIZERS = ("sparse_adam", "adagrad", "sgd")
# Adagrad's sum of squared gradients starts as if each row had seen this much already:
# one event's squared gradient when the prediction is half wrong (gradients are taken per
# event, see SplitOptimizer.step). Without it Adagrad is scale-free: a row's first step
# is lr whatever the gradient's size, so an id seen once with a tiny error (every
# negative of a 0.3% click stream) moves as far as on a click, and rare-positive streams
# are learned as noise.
ADAGRAD_INITIAL = 0.25


def use_sparse_embeddings(model: nn.Module, sparse: bool) -> list[nn.Parameter]:
    """Switch every ``nn.Embedding`` to sparse (or dense) gradients; return their weights.

    ``Embedding.sparse`` is read at each forward pass, so this works on any model,
    built-in or plugin, without its factory knowing about it.
    """
    out = []
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            module.sparse = sparse
            # torch types it Tensor (a parametrization makes it one, which no optimizer takes)
            assert isinstance(module.weight, nn.Parameter)
            out.append(module.weight)
    return out


def _dense(
    params: list[nn.Parameter], name: str, lr: float, wd: float, fused: bool
) -> torch.optim.Optimizer:
    """``fused``: one kernel for the whole update (CUDA), instead of a few per tensor."""
    # else the multi-tensor (foreach) update: a few kernels for all the dense tensors
    # instead of a few per tensor (torch picks it only on CUDA by itself)
    f, each = (True, None) if fused else (None, True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=f, foreach=each)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=f, foreach=each)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=0.9, fused=f, foreach=each)
    raise ValueError(f"unknown optimizer {name!r} (one of {', '.join(DENSE_OPTIMIZERS)})")


class RowAdagrad(torch.optim.Adagrad):
    """``torch.optim.Adagrad`` whose sparse-gradient step touches only the gradient's
    rows in place: gather the rows' sums, add the squares, scatter them back, and add
    the step to the same rows. torch's sparse path builds three sparse tensors and a
    mask per table for the same arithmetic; at a few hundred rows a step, that
    bookkeeping is most of the embeddings' update time. Same state (``sum``,
    ``step``), same checkpoints, the same numbers (tests/test_learner.py); a dense
    gradient, ``lr_decay`` or ``weight_decay`` takes torch's own step for all."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if (
            closure is not None
            or not all(grad.is_sparse for grad in grads)  # dense embeddings (CUDA)
            or any(g["lr_decay"] or g["weight_decay"] or g["maximize"] for g in self.param_groups)
        ):
            return super().step(closure)
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["step"] += 1
                grad = p.grad if p.grad.is_coalesced() else p.grad.coalesce()
                rows, g = grad._indices()[0], grad._values()
                sums = state["sum"].index_select(0, rows).add_(g * g)
                state["sum"].index_copy_(0, rows, sums)
                p.index_add_(0, rows, g / sums.sqrt_().add_(eps), alpha=-lr)
        return None


def _sparse(
    params: list[nn.Parameter], name: str, lr: float, sparse_grads: bool = True
) -> torch.optim.Optimizer:
    """The tables' optimizer. ``sparse_grads=False`` (dense embedding gradients):
    ``sparse_adam`` becomes Adam (same state: ``step``, ``exp_avg``, ``exp_avg_sq``),
    which takes dense gradients; Adagrad and SGD take either."""
    if name == "sparse_adam":
        if not sparse_grads:
            return torch.optim.Adam(params, lr=lr)
        return torch.optim.SparseAdam(params, lr=lr)
    if name == "adagrad":
        return RowAdagrad(params, lr=lr, initial_accumulator_value=ADAGRAD_INITIAL)
    if name == "sgd":  # plain SGD: momentum would densify the rows it touched once
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(
        f"unknown embedding optimizer {name!r} (one of {', '.join(SPARSE_OPTIMIZERS)})"
    )


class SplitOptimizerArgs(TypedDict):
    """``SplitOptimizer``'s keyword arguments but ``lr_multiplier``, kept to build another."""

    name: str
    lr: float
    weight_decay: float
    sparse_name: str
    sparse_lr: float | None
    fused: bool
    sparse_grads: bool


class SplitOptimizer:
    """Dense parameters -> ``name``; embedding tables -> ``sparse_name`` (their gradients
    sparse or not: ``sparse_grads``).

    Every param group remembers its ``base_lr``; ``set_lr_multiplier`` scales all of
    them together (the drift policy's temporary learning-rate boost).
    """

    def __init__(
        self,
        dense: Iterable[nn.Parameter],
        sparse: Iterable[nn.Parameter],
        *,
        name: str = "adam",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        sparse_name: str = DEFAULT_EMBEDDING_OPTIMIZER,
        sparse_lr: float | None = DEFAULT_EMBEDDING_LR,
        lr_multiplier: float = 1.0,
        fused: bool = False,
        sparse_grads: bool = True,
    ) -> None:
        self.parts: dict[str, torch.optim.Optimizer] = {}
        self.per_event = sparse_name == "adagrad"
        dense, sparse = list(dense), list(sparse)
        if dense:
            self.parts["dense"] = _dense(dense, name, lr, weight_decay, fused)
        if sparse:
            self.parts["sparse"] = _sparse(sparse, sparse_name, sparse_lr or lr, sparse_grads)
        if not self.parts:
            raise ValueError("the model has no parameters to train")
        for group in self.param_groups:
            group["base_lr"] = group["lr"]
        self.set_lr_multiplier(lr_multiplier)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    def set_lr_multiplier(self, m: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * m

    def zero_grad(self, in_place: bool = False) -> None:
        """Forget the gradients. ``in_place``: zero dense gradients where they are, so
        the tensors stay the same ones (a captured CUDA graph writes into those very
        tensors at each replay; a new one would leave its replays writing where no
        optimizer reads: a stale gradient applied at every step). Sparse gradients are
        dropped either way."""
        for opt in self.parts.values():
            if not in_place:
                opt.zero_grad(set_to_none=True)
                continue
            dense = []
            for p in (p for g in opt.param_groups for p in g["params"]):
                if p.grad is not None and p.grad.is_sparse:
                    p.grad = None
                elif p.grad is not None:
                    dense.append(p.grad)
            if dense:
                torch._foreach_zero_(dense)

    def step(self, rows: int = 0) -> None:
        """Apply the gradients of a batch of ``rows`` events' mean loss. Adagrad's rows
        get the gradient per event (times ``rows``): its accumulator's start
        (``ADAGRAD_INITIAL``) then means the same at any batch size, and otherwise
        the step is the same (Adagrad is invariant to the gradient's scale)."""
        sparse = self.parts.get("sparse")
        if self.per_event and rows > 1 and sparse is not None:
            for p in (p for g in sparse.param_groups for p in g["params"]):
                if p.grad is not None:
                    p.grad.mul_(rows)
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            for opt in self.parts.values():
                opt.step()

    def state_dict(self) -> dict[str, Any]:
        return {k: opt.state_dict() for k, opt in self.parts.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.parts):
            raise ValueError(
                f"optimizer state has parts {sorted(state)}, this model needs {sorted(self.parts)}"
            )
        for k, opt in self.parts.items():
            # the checkpoint carries the state (moments, step counts); the config's
            # hyperparameters (lr, weight decay, betas...) apply, as they were built
            hyper = [{h: v for h, v in g.items() if h != "params"} for g in opt.param_groups]
            opt.load_state_dict(state[k])
            for group, own in zip(opt.param_groups, hyper, strict=True):
                group.update(own)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Like ``nn.utils.clip_grad_norm_``, but sparse gradients count too.

    Returns the total 2-norm before clipping (``inf``/``nan`` when a gradient is not
    finite: the caller then skips the update).
    """
    total = clip_grads(params, max_norm)
    return 0.0 if total is None else float(total)


def clip_grads(params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor | None:
    """:func:`clip_grad_norm` without reading the norm back to the host on a GPU: the
    total 2-norm before clipping as a 0-dim tensor on the gradients' device (None: no
    gradients), the gradients scaled there by ``max_norm / norm`` when the norm is
    finite and above it (``torch.where``: no host sync). On the CPU, reading the norm
    costs nothing, and the gradients are only touched when they are clipped."""
    grads = []
    for p in params:
        g = p.grad
        if g is None:
            continue
        if g.is_sparse:
            g = p.grad = g.coalesce()  # repeated rows summed once, as the optimizers will
            grads.append(g._values())
        else:
            grads.append(g)
    if not grads:
        return None
    norms = torch._foreach_norm(grads)  # one fused kernel per device and dtype
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    if total.device.type == "cpu":
        value = float(total)
        if math.isfinite(value) and value > max_norm:
            torch._foreach_mul_(grads, max_norm / (value + 1e-6))
        return total
    if math.isfinite(max_norm):
        above = torch.isfinite(total) & (total > max_norm)
        scale = torch.where(above, max_norm / (total + 1e-6), torch.ones_like(total))
        torch._foreach_mul_(grads, scale)
    return total
