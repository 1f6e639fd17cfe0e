"""CUDA graphs for the learner's forward + backward, one capture at a time per process.

torch allows one global-mode capture per process, and a capture synchronises the device
and empties the allocator's cache: the daemon runs one thread per pipeline, and
challengers and per-key models capture mid-stream. So every capture holds
:data:`CAPTURE_LOCK` (one per process), and is made in ``thread_local`` error mode, in
which other threads' CUDA calls (another pipeline's steps, on the caching allocator's
ordinary pool) go on while this thread records.

The gradients a graph writes are tensors of the graph's own pool: captured with the
gradients unset, each replay overwrites them. They must stay the parameters' ``.grad``
afterwards; the learner zeroes them in place (``SplitOptimizer.zero_grad(in_place=True)``)
whenever it takes the eager path (a batch larger than the captured size), so the next
replay writes where the optimizer reads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import torch

CAPTURE_LOCK = threading.Lock()  # process-wide: every learner's capture takes it
WARMUP = 3  # eager runs on a side stream before capturing (torch's recipe)
T = TypeVar("T")


def capture(
    run: Callable[[], T], drop_grads: Callable[[], None], device: torch.device
) -> tuple[torch.cuda.CUDAGraph, T]:
    """Record ``run`` (forward + backward on the static batch) after warming it up on a
    side stream; ``drop_grads`` unsets the gradients before each run, so the graph's
    backward writes them rather than adding to them. Returns (graph, ``run``'s output:
    tensors every replay rewrites).

    On ``device`` explicitly: the current CUDA device is a thread's own, and a pipeline's
    thread starts on cuda:0 whatever GPU its replica's main thread chose."""
    with CAPTURE_LOCK, torch.cuda.device(device):
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                drop_grads()
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        drop_grads()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = run()
        return graph, out
