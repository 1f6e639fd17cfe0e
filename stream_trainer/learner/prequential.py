"""One forward pass with the pre-update weights gives each example's loss and prediction;
then backward and an optimizer step, unless a guard refuses the update.

A built-in head (a model with ``make_baseline``) predicts on top of a running baseline
the learner keeps (models/baseline.py), and what is scored and emitted is the online
mixture of the model and the trivial experts (learner/mixture.py); both are updated
per event, after the event was scored. What a step returns: learner/result.py; a
learner's part in replicas (gradient sync, averaging): learner/sync.py."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from stream_trainer.learner.graphs import capture
from stream_trainer.learner.mixture import Mixture
from stream_trainer.learner.optim import (
    DEFAULT_EMBEDDING_LR,
    DEFAULT_EMBEDDING_OPTIMIZER,
    SplitOptimizer,
    SplitOptimizerArgs,
    clip_grads,
    use_sparse_embeddings,
)
from stream_trainer.learner.result import SKIP_NON_FINITE_GRAD, SKIP_NON_FINITE_LOSS, StepResult
from stream_trainer.learner.static import StaticBatch
from stream_trainer.learner.sync import Reduce, ReplicaSync
from stream_trainer.models.baseline import OFFSET, Baseline

# binary: log loss on one logit; multiclass: cross-entropy on a logit per class (the
# targets are class indices); regression: squared error
TASKS = ("binary", "multiclass", "regression")


def _sparse_or_dense(
    cuda: bool, sparse: bool | None, cuda_graphs: bool, fixed_batch: int | None
) -> bool:
    """Whether embeddings get sparse gradients (None: on the CPU yes, on a GPU no), with
    the CUDA-graph path's requirements checked."""
    if cuda_graphs and not cuda:
        raise ValueError("cuda_graphs needs device 'cuda'")
    if sparse is None:
        sparse = not cuda
    if cuda_graphs and sparse:
        raise ValueError("cuda_graphs needs dense embeddings (sparse_embeddings: false)")
    if cuda_graphs and not fixed_batch:
        raise ValueError("cuda_graphs needs fixed_batch (the batch size to capture)")
    return sparse


class _LearnerArgs(TypedDict):
    """``Learner``'s arguments but the model, kept to spawn another (``Learner.spawn``)."""

    task: str
    optimizer: str
    lr: float
    weight_decay: float
    grad_clip_norm: float | None
    device: torch.device | str
    sparse_embeddings: bool | None
    embedding_optimizer: str
    embedding_lr: float | None
    fixed_batch: int | None
    cuda_graphs: bool
    bf16: bool


class Learner(ReplicaSync):
    """Owns a model and its optimizer; ``step`` is the only place weights change.

    ``sparse_embeddings=None`` means sparse gradients on the CPU (a step then touches only
    the rows of its batch), dense on a GPU (where a dense update is cheap and keeps shapes
    fixed). Either way the embedding tables use ``embedding_optimizer`` at
    ``embedding_lr`` (``None``: ``lr``), in the optimizer's part ``sparse``: one layout on
    every device (learner/optim.py); weight decay applies to dense weights only.

    ``fixed_batch``: pad every batch of up to that many rows to exactly that many (padded
    rows are masked out of the loss). ``cuda_graphs`` (CUDA only, implies fixed batches
    and dense embeddings): forward and backward are captured once and replayed; the
    finiteness guards and the optimizer step stay outside the graph, so a bad batch is
    still refused exactly. ``bf16``: autocast the forward pass to bfloat16 (losses,
    gradients and weights stay float32).
    """

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
        sparse_embeddings: bool | None = None,
        embedding_optimizer: str = DEFAULT_EMBEDDING_OPTIMIZER,
        embedding_lr: float | None = DEFAULT_EMBEDDING_LR,
        fixed_batch: int | None = None,
        cuda_graphs: bool = False,
        bf16: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be 'binary', 'multiclass' or 'regression', not {task!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.task = task
        self.grad_clip_norm = grad_clip_norm
        cuda = self.device.type == "cuda"
        sparse_embeddings = _sparse_or_dense(cuda, sparse_embeddings, cuda_graphs, fixed_batch)
        tables = use_sparse_embeddings(self.model, sparse_embeddings)
        table_ids = {id(p) for p in tables}
        self.sparse_grads = sparse_embeddings  # the tables' gradients (their part is the same)
        self._groups = (
            [p for p in self.model.parameters() if id(p) not in table_ids],
            tables,
        )
        self._opt_args: SplitOptimizerArgs = {
            "name": optimizer,
            "lr": lr,
            "weight_decay": weight_decay,
            "sparse_name": embedding_optimizer,
            "sparse_lr": embedding_lr,
            "fused": cuda,
            "sparse_grads": sparse_embeddings,
        }
        self.base_lr = lr
        self.lr_multiplier = 1.0
        self.updates = 0
        self.optimizer = SplitOptimizer(*self._groups, **self._opt_args)
        make_baseline = getattr(self.model, "make_baseline", None)
        self.baseline: Baseline | None = make_baseline() if callable(make_baseline) else None
        self.mixture = (
            Mixture(task, ("model", *self.baseline.experts), candidates=self.baseline.candidates)
            if self.baseline is not None
            else None
        )
        # the weights it started from: reset_model() and spawn() go back to them
        self._initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._init_args: _LearnerArgs = {
            "task": task,
            "optimizer": optimizer,
            "lr": lr,
            "weight_decay": weight_decay,
            "grad_clip_norm": grad_clip_norm,
            "device": self.device,
            "sparse_embeddings": sparse_embeddings,
            "embedding_optimizer": embedding_optimizer,
            "embedding_lr": embedding_lr,
            "fixed_batch": fixed_batch,
            "cuda_graphs": cuda_graphs,
            "bf16": bf16,
        }
        self._pin = cuda
        self._staging: dict[str, torch.Tensor] = {}  # pinned host buffers, reused (GPU)
        self._back: torch.Tensor | None = None  # pinned: each step's numbers come back here
        # replicas: embeddings sync as the rows a step touched (see ``_local_grads``);
        # ``touched`` (average mode) collects the rows local steps changed since the
        # last averaging, per sparse table
        self.sparse_sync = True
        self.touched: list[list[torch.Tensor]] | None = None
        self._gpu_path(fixed_batch, cuda_graphs, bf16)

    def _gpu_path(self, fixed_batch: int | None, cuda_graphs: bool, bf16: bool) -> None:
        """Fixed-shape batches, the captured graph and autocast (see ``__init__``)."""
        self.static = StaticBatch(fixed_batch, self.device) if fixed_batch else None
        self.cuda_graphs = cuda_graphs
        self.autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
        )
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_shapes: Any = None
        self._graph_out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def lr(self) -> float:
        return self.base_lr * self.lr_multiplier

    def set_lr_multiplier(self, m: float) -> None:
        self.lr_multiplier = m
        self.optimizer.set_lr_multiplier(m)

    def reset_optimizer(self) -> None:
        """Forget moment estimates (they describe the old regime's gradients)."""
        self.optimizer = SplitOptimizer(
            *self._groups, **self._opt_args, lr_multiplier=self.lr_multiplier
        )

    def reset_model(self) -> None:
        """Back to the initial weights, with a fresh optimizer (the ``reset_model``
        drift action: forget a concept that no longer holds). The running baseline and
        the mixture stay: the fresh model starts from what the baseline knows now, level
        with the best trivial expert in the mixture."""
        self.model.load_state_dict(self._initial)
        self.reset_optimizer()
        if self.mixture is not None:
            self.mixture.reset_model()

    def spawn(self) -> Learner:
        """A new learner like this one, from the initial weights (a challenger), with
        this one's running baseline and mixture."""
        model = copy.deepcopy(self.model)
        model.load_state_dict(self._initial)
        child = Learner(model, **self._init_args)
        child.set_lr_multiplier(1.0)
        if self.baseline is not None and child.baseline is not None:
            child.baseline.load_state_dict(copy.deepcopy(self.baseline.state_dict()))
        if self.mixture is not None and child.mixture is not None:
            child.mixture.load_state_dict(copy.deepcopy(self.mixture.state_dict()))
            child.mixture.reset_model()
        child.sparse_sync = self.sparse_sync
        if self.touched is not None:
            child.track_rows()
        return child

    def _tensor(self, array: np.ndarray, name: str) -> torch.Tensor:
        """``array`` on the device. On a GPU through a page-locked buffer of this name,
        kept and reused (pinning anew at each call costs more than the copy): the copy
        runs asynchronously, and every step and prediction ends with a copy back that
        waits for it, so the buffer is free again at the next call."""
        t = torch.from_numpy(np.ascontiguousarray(array))
        if not self._pin:
            return t.to(self.device)
        buf = self._staging.get(name)
        if buf is None or buf.dtype != t.dtype or buf.numel() < t.numel():
            buf = self._staging[name] = torch.empty(t.numel(), dtype=t.dtype, pin_memory=True)
        host = buf[: t.numel()].view(t.shape)
        host.copy_(t)
        return host.to(self.device, non_blocking=True)

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return {k: self._tensor(v, k) for k, v in inputs.items()}

    def _per_example_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.task == "binary":
            return F.binary_cross_entropy_with_logits(out, y, reduction="none")
        if self.task == "multiclass":  # logits [n, classes], targets the class indices
            return F.cross_entropy(out, y.long(), reduction="none")
        loss = F.mse_loss(out, y, reduction="none")
        return loss.reshape(loss.shape[0], -1).mean(1)

    def predict(self, inputs: Mapping[str, np.ndarray], mixed: bool = True) -> np.ndarray:
        """Outputs in model units (probabilities for binary tasks, a row of them per class
        for multiclass ones), without learning:
        the mixture's (``mixed``, where the head has one), else the model's own."""
        rows = next(iter(inputs.values())).shape[0]
        experts = None
        if self.baseline is not None:
            offsets, experts = self.baseline.predict(inputs, None, rows)
            if offsets is not None:
                inputs = {**inputs, OFFSET: offsets.astype(np.float32)}
        with torch.no_grad(), self.autocast:
            out = self._model_out(self._tensors(inputs))
        own = self._to_numpy(out)
        if not mixed or self.mixture is None or experts is None:
            return own
        both = np.concatenate([own.reshape(rows, 1, *experts.shape[2:]), experts], 1)
        return self.mixture.predict(both).astype(own.dtype)

    def _model_out(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The head's output: the model's, plus the baseline's offset where there is one."""
        offset = x.get(OFFSET)
        if offset is None:
            return self.model(**x)
        out = self.model(**{k: v for k, v in x.items() if k != OFFSET})
        return out + offset.to(out.dtype)

    def _forward(
        self, x: Mapping[str, torch.Tensor], y: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(outputs, per-example losses, the mean loss over real rows)."""
        with self.autocast:
            out = self._model_out(x)
        per = self._per_example_loss(out.float(), y)
        if mask is None:
            return out, per, per.mean()
        return out, per, (per * mask).sum() / mask.sum().clamp_min(1.0)

    def _fwd_bwd(
        self, x: Mapping[str, torch.Tensor], y: torch.Tensor, m: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out, per, loss = self._forward(x, y, m)
        loss.backward()
        return out, per, loss

    def _outputs(self, out: torch.Tensor) -> torch.Tensor:
        """The model's raw outputs as the task's predictions: a probability (binary), one
        per class (multiclass), or the value (regression)."""
        if self.task == "binary":
            return torch.sigmoid(out)
        if self.task == "multiclass":
            return torch.softmax(out.float(), -1)
        return out

    def _to_numpy(self, out: torch.Tensor) -> np.ndarray:
        return self._outputs(out).detach().float().cpu().numpy()

    def step(
        self,
        inputs: Mapping[str, np.ndarray],
        targets: np.ndarray,
        replay: tuple[Mapping[str, np.ndarray], np.ndarray] | None = None,
        reduce: Reduce | None = None,
    ) -> StepResult:
        """Score the batch with the current weights, then learn from it. ``replay``:
        past examples that join the update only (losses and outputs are the batch's).
        ``reduce`` (replicas in ``allreduce`` mode): called with this batch's example
        count and flat gradient, it sums both over the replicas and leaves the mean
        gradient in place; every replica then applies the same update."""
        if not self.model.training:  # (a walk over every module, at every step)
            self.model.train()
        n = int(targets.shape[0])
        if replay is not None:
            old_inputs, old_targets = replay
            inputs = {k: np.concatenate([v, old_inputs[k]]) for k, v in inputs.items()}
            targets = np.concatenate([targets, old_targets])
        experts = None
        if self.baseline is not None:
            offsets, experts = self.baseline.predict(inputs, targets, n)
            if offsets is not None:
                inputs = {**inputs, OFFSET: offsets.astype(np.float32)}
        out, per, loss, graphed = self._score(inputs, targets)
        if not graphed:  # (a replay has written the gradients already)
            # in place once there are fixed-shape buffers: a graph's gradients stay its own
            self.optimizer.zero_grad(in_place=self.static is not None)
            loss.backward()  # before the finiteness check: that waits for the copy back
        max_norm = self.grad_clip_norm if self.grad_clip_norm is not None else math.inf
        norm = clip_grads(self.model.parameters(), max_norm) if reduce is None else None
        losses, outputs, mean, grad_norm = self._fetch(per[:n], out[:n], loss, norm)
        result = StepResult(losses, outputs)
        if not math.isfinite(mean):
            result.skipped = SKIP_NON_FINITE_LOSS
            if reduce is not None:
                self._synced_update(reduce, 0, None)  # the others may still have data
            return result
        if reduce is not None:
            grads = self._local_grads(n)
            if grads is None:
                result.skipped = SKIP_NON_FINITE_GRAD
                self._synced_update(reduce, 0, None)
            else:
                self._synced_update(reduce, n, grads, result)
        elif not math.isfinite(grad_norm):
            result.grad_norm, result.skipped = grad_norm, SKIP_NON_FINITE_GRAD
        else:
            result.grad_norm, result.clipped = grad_norm, grad_norm > max_norm
            self.optimizer.step(n)  # on a GPU, queued: the mixture below runs meanwhile
            self.updates += 1
            if self.touched is not None:
                self._touch()
        if self.baseline is not None and experts is not None:
            self._score_mixture(result, experts[:n], targets[:n])
        return result

    def _fetch(
        self, per: torch.Tensor, out: torch.Tensor, loss: torch.Tensor, norm: torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray, float, float]:
        """(per-example losses, outputs in model units, mean loss, gradient norm) on the
        host, in one copy back: on a GPU the step's only wait for the device."""
        out = self._outputs(out).detach().float()
        norm = norm if norm is not None else torch.zeros_like(loss)
        parts = [per.detach().float().reshape(-1), out.reshape(-1), loss.detach().reshape(1)]
        flat = torch.cat([*parts, norm.reshape(1)])
        if self._pin:
            if self._back is None or self._back.numel() < flat.numel():
                self._back = torch.empty(2 * flat.numel(), pin_memory=True)
            back = self._back[: flat.numel()]
            back.copy_(flat, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            host = back.numpy().copy()  # (the buffer is reused at the next step)
        else:
            host = flat.numpy()
        n, k = per.shape[0], out.numel()
        return host[:n], host[n : n + k].reshape(out.shape), float(host[n + k]), float(host[-1])

    def _score_mixture(self, result: StepResult, experts: np.ndarray, targets: np.ndarray) -> None:
        """The scored events' targets join the baseline; the mixture of the model and the
        trivial experts becomes the result (the model's own losses are kept beside)."""
        assert self.baseline is not None and self.mixture is not None
        self.baseline.commit()
        own, n = result.outputs, result.outputs.shape[0]
        both = np.concatenate([own.reshape(n, 1, *experts.shape[2:]), experts], 1)
        mixed, losses = self.mixture.step(both, targets)
        result.model_losses = result.losses
        result.outputs = mixed.astype(own.dtype, copy=False)
        result.losses = losses.astype(result.losses.dtype, copy=False)
        result.weights = dict(zip(self.mixture.names, self.mixture.weights().tolist(), strict=True))

    def _score(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Forward with the pre-update weights: outputs, per-example and mean loss, and
        whether a captured graph ran (then the gradients are written already)."""
        if self.static is None or targets.shape[0] > self.static.size:  # (larger: eager)
            x, y = self._tensors(inputs), self._tensor(targets, "__targets__")
            return (*self._forward(x, y, None), False)
        x, y, m = self.static.load(inputs, targets)
        if not self.cuda_graphs:
            return (*self._forward(x, y, m), False)
        if self._graph is None or self._graph_shapes != self.static.shapes:
            self._graph, self._graph_out = capture(
                lambda: self._fwd_bwd(x, y, m), self.optimizer.zero_grad, self.device
            )
            self._graph_shapes = self.static.shapes
        assert self._graph_out is not None
        self._graph.replay()
        return (*self._graph_out, True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "lr_multiplier": self.lr_multiplier,
            "baseline": self.baseline.state_dict() if self.baseline is not None else {},
            "mixture": self.mixture.state_dict() if self.mixture is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.set_lr_multiplier(float(state["lr_multiplier"]))
        if self.baseline is not None:
            self.baseline.load_state_dict(state["baseline"])
        if self.mixture is not None:
            self.mixture.load_state_dict(state["mixture"])
