"""A user-defined featurizer and model, loaded by import path in the tests."""

from __future__ import annotations

import numpy as np
from torch import nn

from stream_trainer.features import FeatureBatch


class MeanFeaturizer:
    """Predict ``y`` from ``x`` (both plain fields of a JSON object)."""

    task = "regression"
    input_spec = {"width": 1}

    def __init__(self) -> None:
        self.seen = 0

    def featurize(self, events):
        x = np.array([[float(e["x"])] for e in events], np.float32).reshape(-1, 1)
        y = np.array([float(e["y"]) for e in events], np.float32)
        self.seen += len(events)
        return FeatureBatch(inputs={"x": x}, targets=y, index=np.arange(len(events)))

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = int(state["seen"])


class Linear(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, 1)

    def forward(self, x):
        return self.lin(x).squeeze(-1)


def build(spec):
    return Linear(spec["width"])


NOT_A_MODULE = 3


class SlowLinear(Linear):
    """Takes its time on every step: makes a graceful stop take seconds, on purpose."""

    def forward(self, x):
        import time

        time.sleep(0.2)
        return super().forward(x)


def build_slow(spec):
    return SlowLinear(spec["width"])
