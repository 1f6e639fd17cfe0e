"""The tabular model: a linear part (the normalised numbers, a learned bias per hashed
category) plus an MLP over the numbers and the categories' embeddings, on top of the
running baseline of its task (rate, class prior, running mean: models/baseline.py).
Output layers start at zero, so a fresh model predicts the baseline."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from stream_trainer.models.baseline import ClassPrior, MeanBaseline, RateBaseline


class TabularModel(nn.Module):
    def __init__(
        self,
        numeric: int,
        categorical: int,
        buckets: int,
        task: str,
        classes: int = 0,
        dim: int = 8,
        hidden: int = 64,
        layers: int = 2,
    ) -> None:
        super().__init__()
        self.task, self.classes = task, classes
        out = classes if task == "multiclass" else 1
        self.emb = nn.Embedding(buckets, dim, padding_idx=0)
        self.cat_bias = nn.Embedding(buckets, out, padding_idx=0)
        self.linear = nn.Linear(numeric, out)
        blocks: list[nn.Module] = []
        width = numeric + categorical * dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.mlp = nn.Sequential(*blocks, nn.Linear(width, out))
        nn.init.normal_(self.emb.weight, std=0.05)
        for zero in (self.cat_bias.weight, self.linear.weight, self.linear.bias):
            nn.init.zeros_(zero)
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def make_baseline(self) -> RateBaseline | ClassPrior | MeanBaseline:
        if self.task == "binary":
            return RateBaseline()
        if self.task == "multiclass":
            return ClassPrior(self.classes)
        return MeanBaseline()

    def forward(self, num: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        e = self.emb(cat).flatten(1)
        y = self.linear(num) + self.cat_bias(cat).sum(1) + self.mlp(torch.cat([num, e], 1))
        return y if self.task == "multiclass" else y.squeeze(-1)


def build(spec: dict[str, Any], dim: int = 8, hidden: int = 64, layers: int = 2) -> TabularModel:
    return TabularModel(
        spec["numeric"],
        spec["categorical"],
        spec["buckets"],
        spec["task"],
        spec.get("classes", 0),
        dim=dim,
        hidden=hidden,
        layers=layers,
    )
