"""Fixed-shape batches: the inputs CUDA graphs need, fed through pinned host memory.

Every batch is copied into preallocated buffers of ``size`` rows, padded with zeros
(index 0 is every embedding's padding row), with a 0/1 mask that keeps padded rows out
of the loss. On a GPU the host buffers are page-locked, so the host-to-device copies
are asynchronous (``non_blocking``); the device tensors never move, which is what a
captured graph replays against.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


class StaticBatch:
    def __init__(self, size: int, device: torch.device) -> None:
        self.size = size
        self.device = device
        self.pin = device.type == "cuda"
        self.host: dict[str, torch.Tensor] = {}
        self.dev: dict[str, torch.Tensor] = {}

    def _slot(self, name: str, array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = torch.from_numpy(array[:0]).dtype
        shape = (self.size, *array.shape[1:])
        host = self.host.get(name)
        if host is None or host.shape != shape or host.dtype != dtype:
            host = torch.zeros(shape, dtype=dtype, pin_memory=self.pin)
            self.host[name] = host
            self.dev[name] = torch.zeros(shape, dtype=dtype, device=self.device)
        return host, self.dev[name]

    def _load(self, name: str, array: np.ndarray) -> torch.Tensor:
        host, dev = self._slot(name, array)
        n = array.shape[0]
        host[:n].copy_(torch.from_numpy(np.ascontiguousarray(array)))
        host[n:].zero_()
        dev.copy_(host, non_blocking=True)
        return dev

    def load(
        self, inputs: Mapping[str, np.ndarray], targets: np.ndarray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Device tensors of ``size`` rows: inputs, targets and the mask of real rows."""
        n = targets.shape[0]
        if n > self.size:
            raise ValueError(f"batch of {n} rows > the fixed size {self.size}")
        x = {k: self._load(k, v) for k, v in inputs.items()}
        y = self._load("__targets__", targets)
        return x, y, self._load("__mask__", np.ones(n, np.float32))

    @property
    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {k: (tuple(v.shape), v.dtype) for k, v in self.dev.items()}
