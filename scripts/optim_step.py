"""CPU time of one optimizer step for the click model's parameters, torch's against ours,
alternating in one process (medians): the embedding tables' Adagrad (torch's sparse
path vs ``RowAdagrad``) on a batch's worth of touched rows, and the dense layers' Adam
(one tensor at a time vs multi-tensor).

    .venv/bin/python scripts/optim_step.py [--rows 256] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch

from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.learner.optim import ADAGRAD_INITIAL, RowAdagrad, use_sparse_embeddings
from stream_trainer.models.clicks import build as build_click_model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=256, help="ids per table and step (a batch)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=50, help="steps per round")
    a = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Sparse invariant checks")
    model = build_click_model(ClickFeaturizer().input_spec)
    tables = use_sparse_embeddings(model, True)
    dense = [p for p in model.parameters() if all(p is not t for t in tables)]

    def params(like: list[torch.nn.Parameter]) -> list[torch.nn.Parameter]:
        return [torch.nn.Parameter(p.detach().clone()) for p in like]

    def sparse_grads(ps: list[torch.nn.Parameter]) -> None:
        for p in ps:
            rows = torch.randint(0, p.shape[0], (a.rows,)).unique()
            values = torch.randn(len(rows), *p.shape[1:])
            p.grad = torch.sparse_coo_tensor(rows[None], values, p.shape).coalesce()

    def dense_grads(ps: list[torch.nn.Parameter]) -> None:
        for p in ps:
            p.grad = torch.randn_like(p)

    cases = {}
    for name, cls in (("adagrad: torch", torch.optim.Adagrad), ("adagrad: ours", RowAdagrad)):
        ps = params(tables)
        cases[name] = (ps, cls(ps, lr=0.1, initial_accumulator_value=ADAGRAD_INITIAL), sparse_grads)
    for name, each in (("adam: per tensor", False), ("adam: multi-tensor", True)):
        ps = params(dense)
        cases[name] = (ps, torch.optim.Adam(ps, lr=3e-3, foreach=each), dense_grads)
    ms: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.rounds):
        for name, (ps, opt, grads) in cases.items():
            grads(ps)
            t0 = time.process_time()
            for _ in range(a.steps):
                opt.step()
            ms[name].append((time.process_time() - t0) / a.steps * 1e3)
    out = {k: round(statistics.median(v), 3) for k, v in ms.items()}
    print(json.dumps({"ms_cpu_per_step": out, "tables": [list(t.shape) for t in tables]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
