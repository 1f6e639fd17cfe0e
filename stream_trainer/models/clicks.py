"""Click-through model: hashed embeddings + factorisation terms + a small MLP, learning
the residual on top of the running base rate's logit (models/baseline.py)."""

from __future__ import annotations

import torch
from torch import nn

from stream_trainer.models.baseline import RateBaseline


class ClickModel(nn.Module):
    """Logit = biases (incl. a hashed user x item bias) + pairwise dot products
    (user, item, context) + MLP(concat), added by the learner to the logit of the
    running click rate. Biases and the MLP's output layer start at zero (the embeddings
    near it), so a fresh model predicts the base rate."""

    def __init__(
        self,
        id_buckets: int,
        context_buckets: int,
        max_context: int,
        dim: int = 16,
        hidden: int = 64,
        pair_buckets: int = 0,
    ) -> None:
        super().__init__()
        self.user = nn.Embedding(id_buckets, dim, padding_idx=0)
        self.item = nn.Embedding(id_buckets, dim, padding_idx=0)
        self.ctx = nn.Embedding(context_buckets, dim, padding_idx=0)
        self.user_bias = nn.Embedding(id_buckets, 1, padding_idx=0)
        self.item_bias = nn.Embedding(id_buckets, 1, padding_idx=0)
        self.ctx_bias = nn.Embedding(context_buckets, 1, padding_idx=0)
        self.pair_bias = nn.Embedding(pair_buckets, 1, padding_idx=0) if pair_buckets else None
        self.mlp = nn.Sequential(nn.Linear(3 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.bias = nn.Parameter(torch.zeros(1))
        for emb in (self.user, self.item, self.ctx):
            nn.init.normal_(emb.weight, std=0.01)
        for bias in (self.user_bias, self.item_bias, self.ctx_bias, self.pair_bias):
            if bias is not None:
                nn.init.zeros_(bias.weight)
        out = self.mlp[-1]
        assert isinstance(out, nn.Linear)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)

    def make_baseline(self) -> RateBaseline:
        """The running baseline this head predicts on top of (the learner keeps it)."""
        return RateBaseline()

    def forward(
        self,
        user: torch.Tensor,
        item: torch.Tensor,
        ctx: torch.Tensor,
        ctx_w: torch.Tensor,
        pair: torch.Tensor | None = None,
    ) -> torch.Tensor:
        u, i = self.user(user), self.item(item)
        w = ctx_w.unsqueeze(-1)
        c = (self.ctx(ctx) * w).sum(1)
        biases = (self.user_bias(user) + self.item_bias(item)).squeeze(-1)
        biases = biases + (self.ctx_bias(ctx) * w).sum(1).squeeze(-1)
        if self.pair_bias is not None and pair is not None:
            biases = biases + self.pair_bias(pair).squeeze(-1)
        fm = (u * i).sum(-1) + (u * c).sum(-1) + (i * c).sum(-1)
        return self.bias + biases + fm + self.mlp(torch.cat([u, i, c], -1)).squeeze(-1)


def build(spec: dict, dim: int = 16, hidden: int = 64) -> ClickModel:
    return ClickModel(
        spec["id_buckets"],
        spec["context_buckets"],
        spec["max_context"],
        dim=dim,
        hidden=hidden,
        pair_buckets=spec.get("pair_buckets", 0),
    )
