"""``stream-trainer checkpoint inspect|export``: what a checkpoint holds; its model, to
serve elsewhere."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from stream_trainer.errors import ConfigError


def cmd_checkpoint(a: argparse.Namespace) -> int:
    from stream_trainer.checkpoint.summary import find, render, summarize

    files = find(Path(a.path))
    if a.action == "export":
        return _export(a, files)
    summaries = [summarize(f) for f in files]
    if a.json:
        for s in summaries:
            print(json.dumps(s))
    else:
        print("\n\n".join(render(s) for s in summaries))
    return 0


def _export(a: argparse.Namespace, files: list[Path]) -> int:
    if len(files) != 1:
        raise ConfigError(f"{a.path} holds {len(files)} pipelines' checkpoints: name one")
    from stream_trainer.serving.export import export

    try:
        target = export(files[0], a.format, Path(a.out), _pipeline_config(a, files[0]))
    except ImportError as err:  # the optional packages (onnx, onnxscript, safetensors)
        raise ConfigError(
            f"export needs {err.name}: pip install 'stream-trainer[export]'"
        ) from None
    print(f"wrote {target} and {target.parent / 'model_card.json'}")
    return 0


def _pipeline_config(a: argparse.Namespace, path: Path) -> dict[str, Any] | None:
    """The pipeline's settings from --config, for a file that does not record them."""
    if a.config is None:
        return None
    from stream_trainer.config import load_settings

    settings = load_settings(a.config)
    name = a.pipeline or path.parent.name
    for spec in settings.pipelines:
        if spec.name == name:
            return spec.model_dump(mode="json")
    raise ConfigError(f"{a.config} has no pipeline {name!r} (--pipeline)")
