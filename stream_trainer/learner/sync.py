"""A learner's part in replicas (pipeline/replicated.py): in ``allreduce`` mode, this
step's gradient as one flat dense buffer plus each embedding table's touched rows, and
the update applied from what all replicas sent; in ``average`` mode, the tensors that
are averaged and the rows changed since the last averaging. Mixed into
:class:`~stream_trainer.learner.prequential.Learner`, which owns the model and optimizer."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from stream_trainer.learner.optim import SplitOptimizer, clip_grad_norm
from stream_trainer.learner.result import SKIP_NON_FINITE_GRAD, StepResult

Rows = list[tuple[torch.Tensor, torch.Tensor]]
# replicas in allreduce mode: (this replica's examples, its flat dense gradient times
# them, and per sparse table the rows it touched: (row ids, gradient rows times the
# examples)) -> (examples over all replicas, the rows of all of them divided by that);
# the dense gradient is left summed and divided in place
Reduce = Callable[[int, torch.Tensor, Rows], tuple[int, Rows]]


class ReplicaSync:
    """Mixed into :class:`~stream_trainer.learner.prequential.Learner`, which owns these parts."""

    model: nn.Module
    device: torch.device
    optimizer: SplitOptimizer
    grad_clip_norm: float | None
    updates: int
    sparse_sync: bool
    sparse_grads: bool
    touched: list[list[torch.Tensor]] | None
    _groups: tuple[list[nn.Parameter], list[nn.Parameter]]

    def idle_step(self, reduce: Reduce) -> bool:
        """A replica without data this round: contribute nothing, apply the others'
        update. True when an update was applied."""
        if not self.model.training:  # (a walk over every module, at every step)
            self.model.train()
        return self._synced_update(reduce, 0, None)

    def _trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _synced_tables(self) -> list[nn.Parameter]:
        """The embedding tables that sync as rows (none without sparse sync, or with dense
        embedding gradients: those sync whole, with the dense buffer)."""
        if not self.sparse_sync or not self.sparse_grads:
            return []
        return [p for p in self._groups[1] if p.requires_grad]

    def _empty_rows(self, p: nn.Parameter) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(0, dtype=torch.long, device=p.device)
        return ids, torch.zeros((0, *p.shape[1:]), dtype=p.dtype, device=p.device)

    def _local_grads(self, n: int) -> tuple[torch.Tensor, Rows] | None:
        """This step's gradient times ``n``: the dense parameters as one flat buffer
        (every parameter, densified, without sparse sync) and each table's touched rows
        (row ids once each, their gradient rows); None when any of it is not finite."""
        tables = {id(p) for p in self._synced_tables()}
        parts, rows = [], []
        for p in self._trainable():
            g = p.grad
            if id(p) in tables:
                if g is None:
                    rows.append(self._empty_rows(p))
                    continue
                g = (g if g.is_sparse else g.to_sparse(sparse_dim=1)).coalesce()
                rows.append((g._indices()[0], g._values() * n))
            elif g is None:
                parts.append(torch.zeros(p.numel(), dtype=p.dtype, device=p.device))
            else:
                parts.append((g.to_dense() if g.is_sparse else g).reshape(-1))
        flat = torch.cat(parts) * n if parts else torch.zeros(0, device=self.device)
        ok = torch.stack([torch.isfinite(t).all() for t in (flat, *(v for _, v in rows))])
        return (flat, rows) if bool(ok.all()) else None  # (one read back, not one per part)

    def _synced_update(
        self,
        reduce: Reduce,
        n: int,
        grads: tuple[torch.Tensor, Rows] | None,
        result: StepResult | None = None,
    ) -> bool:
        params = self._trainable()
        tables = self._synced_tables()
        table_ids = {id(p) for p in tables}
        if grads is None:  # nothing from this replica: zeros and no rows
            dense_n = sum(p.numel() for p in params if id(p) not in table_ids)
            grads = torch.zeros(dense_n, device=self.device), [self._empty_rows(p) for p in tables]
        flat, rows = grads
        total, rows = reduce(n, flat, rows)
        if total == 0:  # nobody had data (or only non-finite data)
            return False
        sparse = {id(p) for p in self._groups[1]}
        it = iter(rows)
        i = 0
        for p in params:
            if id(p) in table_ids:  # the rows every replica touched (repeats summed)
                ids, vals = next(it)
                p.grad = torch.sparse_coo_tensor(
                    ids.unsqueeze(0), vals, p.shape, check_invariants=False
                ).coalesce()
                continue
            g = flat[i : i + p.numel()].view_as(p)
            i += p.numel()
            if id(p) in sparse and self.sparse_grads:  # back to the rows touched
                p.grad = g.to_sparse(sparse_dim=1).coalesce()
            elif p.grad is None or p.grad.is_sparse:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)  # in place: a CUDA graph's gradients stay its own
        max_norm = self.grad_clip_norm if self.grad_clip_norm is not None else math.inf
        norm = clip_grad_norm(params, max_norm)  # the same on every replica
        if result is not None:
            result.grad_norm, result.clipped = norm, norm > max_norm
        if not math.isfinite(norm):
            self.optimizer.zero_grad(in_place=True)
            if result is not None:
                result.skipped = SKIP_NON_FINITE_GRAD
            return False
        self.optimizer.step(total)
        self.updates += 1
        return True

    def track_rows(self) -> None:
        """Average mode with sparse sync: remember the rows each local step changes."""
        self.touched = [[] for _ in self._synced_tables()]

    def _touch(self) -> None:
        assert self.touched is not None
        for seen, p in zip(self.touched, self._synced_tables(), strict=True):
            if p.grad is not None and p.grad.is_sparse:
                seen.append(p.grad._indices()[0].clone())

    def take_touched(self) -> list[torch.Tensor]:
        """The rows changed since the last call, per synced table (unique, sorted)."""
        tables = self._synced_tables()
        seen = self.touched or [[] for _ in tables]
        out = [
            torch.unique(torch.cat(s)) if s else self._empty_rows(p)[0]
            for s, p in zip(seen, tables, strict=True)
        ]
        if self.touched is not None:
            self.track_rows()
        return out

    def sync_tensors(self, with_optimizer: bool) -> list[torch.Tensor]:
        """What ``average`` mode averages: the weights and floating buffers, and the
        optimizers' floating state tensors."""
        out = [p.data for p in self.model.parameters()]
        out += [b for b in self.model.buffers() if b.is_floating_point()]
        if with_optimizer:
            out += self._optimizer_tensors()
        return out

    def sync_parts(
        self, with_optimizer: bool
    ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """``sync_tensors`` split for sparse averaging: (tensors averaged whole, and per
        synced table the table and its optimizer state shaped like it, averaged on the
        rows that changed)."""
        tables = self._synced_tables()
        table_ids = {id(p) for p in tables}
        whole = [p.data for p in self.model.parameters() if id(p) not in table_ids]
        whole += [b for b in self.model.buffers() if b.is_floating_point()]
        rowed: list[list[torch.Tensor]] = [[p.data] for p in tables]
        if with_optimizer:
            for opt in self.optimizer.parts.values():
                for p in (p for g in opt.param_groups for p in g["params"]):
                    for t in self._state_tensors(opt, p):
                        if id(p) in table_ids and t.shape == p.shape:
                            rowed[[id(q) for q in tables].index(id(p))].append(t)
                        else:
                            whole.append(t)
        return whole, rowed

    @staticmethod
    def _state_tensors(opt: torch.optim.Optimizer, p: torch.Tensor) -> list[torch.Tensor]:
        return [
            v
            for _, v in sorted(opt.state.get(p, {}).items())
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not v.is_sparse
        ]

    def _optimizer_tensors(self) -> list[torch.Tensor]:
        out = []
        for opt in self.optimizer.parts.values():
            for p in (p for g in opt.param_groups for p in g["params"]):
                out += self._state_tensors(opt, p)
        return out

    def optimizer_signature(self) -> tuple[int, int]:
        """(tensors, elements) of the optimizer state: replicas average it only when
        theirs match (Adam creates its moments at a parameter's first step)."""
        ts = self._optimizer_tensors()
        return len(ts), sum(t.numel() for t in ts)
