"""Which device a process trains on: ``device: auto | cpu | cuda`` and, for replicas
under torchrun, the GPU of its local rank (one GPU per replica on a machine; NCCL
refuses two ranks on one GPU: "Duplicate GPU detected")."""

from __future__ import annotations

import torch


def device_for(name: str, local_rank: int, cuda_count: int) -> str:
    """The device for ``name`` on local rank ``local_rank`` of a machine whose torch
    sees ``cuda_count`` GPUs. Pure, so any machine can check it.

    >>> device_for("auto", 0, 0), device_for("auto", 1, 2), device_for("cuda", 0, 1)
    ('cpu', 'cuda:1', 'cuda:0')
    >>> device_for("cuda:1", 0, 2), device_for("cpu", 3, 8)
    ('cuda:1', 'cpu')
    """
    if name == "auto":
        name = "cuda" if cuda_count else "cpu"
    if not name.startswith("cuda"):
        return name
    if not cuda_count:
        raise ValueError(
            "device 'cuda' requested but torch sees no CUDA device; use device: auto or cpu"
        )
    if name != "cuda":  # an explicit index: as asked
        return name
    if local_rank >= cuda_count:
        raise ValueError(
            f"replica with local rank {local_rank} but torch sees {cuda_count} GPU(s) on "
            "this machine: one GPU per replica (torchrun --nproc-per-node at most "
            f"{cuda_count}), or device: cpu"
        )
    return f"cuda:{local_rank}"


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this local rank's GPU when torch sees one, else the CPU; made the
    current CUDA device, so that every kernel and NCCL use that GPU. Asking for ``cuda``
    without one is an error."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = torch.device(device_for(name, local_rank, count))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
