"""Export a checkpoint's model to serve it elsewhere: ``stream-trainer checkpoint export``.

What is exported is what ``/predict`` serves: the pipeline restored from the checkpoint
(through the format's migrations, as a restart would), its model on top of its running
baseline, mixed with the trivial experts, all as of the checkpoint. Two formats:

- ``onnx``: one graph from the featurizer's arrays to the served score (the baseline's
  offset and the mixture's weights are constants of the graph: they are the checkpoint's,
  and change only as it trains). The featurizer (hashing ids into buckets) stays outside:
  the model card lists the inputs it makes. Only heads whose baseline does not read the
  inputs can be one graph (clicks, custom heads without a baseline): the same ones
  ``/predict`` serves.
- ``safetensors``: the model's weights, for a program that builds the same module.

Each comes with ``model_card.json``: kind, pipeline, versions, the featurizer's settings
and input spec, the inputs' names, dtypes and shapes, and the quality at export.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_trainer.checkpoint.summary import summarize
from stream_trainer.config import parse_settings
from stream_trainer.errors import ConfigError, StreamTrainerError
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.producers import make_generator

FORMATS = ("onnx", "safetensors")


class Served(nn.Module):
    """The served score as one module: ``model(inputs) + offset``, through a sigmoid for
    binary tasks, mixed with constant experts (``weights[0]`` the model's)."""

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        binary: bool,
        offset: float | None,
        weights: np.ndarray | None,
        experts: np.ndarray | None,
    ) -> None:
        super().__init__()
        self.model, self.names, self.binary = model, names, binary
        self.offset = offset
        w = torch.as_tensor(weights if weights is not None else [1.0], dtype=torch.float32)
        e = torch.as_tensor(experts if experts is not None else np.zeros(0), dtype=torch.float32)
        self.weights: torch.Tensor
        self.experts: torch.Tensor
        self.register_buffer("weights", w)
        self.register_buffer("experts", e)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        y = self.model(**dict(zip(self.names, inputs, strict=True)))
        if self.offset is not None:
            y = y + self.offset
        if self.binary:
            y = torch.sigmoid(y)
        if self.experts.numel():
            y = self.weights[0] * y + (self.weights[1:] * self.experts).sum()
        return y


def restored(path: Path, config: Mapping[str, Any] | None = None) -> Pipeline:
    """Today's pipeline restored from the checkpoint file ``path``: with the settings the
    file records (format 3 on), else those of ``config`` (a pipeline's settings)."""
    doc = torch.load(path, map_location="cpu", weights_only=True)
    spec = json.loads(doc["settings"]) if "settings" in doc else config
    if spec is None:
        raise ConfigError(
            f"{path} was written before 0.2.0 and does not record its pipeline's settings: "
            "pass --config with the pipelines YAML it was trained with (and --pipeline)"
        )
    root = Path(tempfile.mkdtemp(prefix="export-"))
    try:
        (root / spec["name"]).mkdir()
        shutil.copy(path, root / spec["name"] / "ckpt-000000000001.pt")
        settings = parse_settings(
            {"checkpoint": {"dir": str(root)}, "device": "cpu", "pipelines": [spec]}
        )
        p = Pipeline(settings, settings.pipelines[0])
        if not p.restore():
            raise StreamTrainerError(f"{path}: not a readable checkpoint")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return p


def example_inputs(p: Pipeline) -> dict[str, np.ndarray]:
    """The featurizer's arrays for a few synthetic events of the pipeline's kind."""
    try:
        events = list(make_generator(p.spec.kind, seed=0, count=4))
    except (KeyError, ValueError):
        raise ConfigError(
            f"ONNX export of kind {p.spec.kind!r} needs an example event: export "
            "safetensors instead"
        ) from None
    return dict(p.featurizer.featurize(events).inputs)  # (a throwaway pipeline's state)


def served_module(p: Pipeline) -> Served:
    """The pipeline's served score as a module (see :class:`Served`)."""
    learner, inputs = p.learner, example_inputs(p)
    offset = weights = experts = None
    if learner.baseline is not None:
        rows = next(iter(inputs.values())).shape[0]
        o, e = learner.baseline.predict(inputs, None, rows)
        if not _constant(o) or not _constant(e):
            raise ConfigError(
                f"pipeline {p.name}: its baseline reads the inputs ({p.spec.kind}), so it "
                "is no single graph; export safetensors, or serve it with /predict"
            )
        offset = None if o is None else float(np.asarray(o).reshape(-1)[0])
        experts = np.asarray(e, np.float64)[0].reshape(-1)
        if learner.mixture is not None:
            weights = learner.mixture.weights()
    model = learner.model.eval()
    return Served(model, list(inputs), learner.task == "binary", offset, weights, experts)


def _constant(a: Any) -> bool:
    if a is None:
        return True
    a = np.asarray(a)
    return bool(np.all(a == a[:1]))


def model_card(p: Pipeline, path: Path, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    s = summarize(path)
    return {
        "pipeline": p.name,
        "kind": p.spec.kind,
        "task": p.learner.task,
        "output": "probability (binary)" if p.learner.task == "binary" else "model units",
        "package_version": s["package_version"],
        "format_version": s["format_version"],
        "model_version": p.learner.updates,
        "events_trained": p.counters["trained"],
        "quality_at_export": {
            "smoothed_loss": None if np.isnan(p.smoothed_loss) else float(p.smoothed_loss)
        },
        "featurizer": p.spec.featurizer,
        "input_spec": dict(getattr(p.featurizer, "input_spec", {})),
        "inputs": {
            k: {"dtype": str(v.dtype), "shape": ["batch", *v.shape[1:]]} for k, v in inputs.items()
        },
        "parameters": s["parameters"],
    }


def export(path: Path, fmt: str, out: Path, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``out/model.<fmt>`` and ``out/model_card.json``; the model's path."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: one of {', '.join(FORMATS)}")
    p = restored(path, config)
    out.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(p) if fmt == "onnx" else {}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        target = out / "model.safetensors"
        state = {k: v.detach().contiguous() for k, v in p.learner.model.state_dict().items()}
        save_file(state, str(target), metadata={"pipeline": p.name, "kind": p.spec.kind})
    else:
        target = out / "model.onnx"
        module = served_module(p).eval()
        args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values())
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            module, args, str(target), input_names=list(inputs), output_names=["score"],
            dynamic_shapes=(tuple({0: batch} for _ in args),), dynamo=True,
        )  # fmt: skip
    card = model_card(p, path, inputs)
    card["format"] = fmt
    (out / "model_card.json").write_text(json.dumps(card, indent=1, default=str) + "\n")
    return target
