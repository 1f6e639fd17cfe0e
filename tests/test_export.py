"""``stream-trainer checkpoint export``: the model /predict serves, as ONNX (the same
scores as /predict on the same events, through onnxruntime) or safetensors (the same
weights), with a model card; files from before 0.2.0 need the config that trained them."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import yaml
from fixtures.checkpoints.regenerate import HERE, cases, train
from safetensors.torch import load_file

from stream_trainer.cli import main
from stream_trainer.serving import Publisher, Scorer
from stream_trainer.serving.export import restored

PROBES = [
    {"ts": 1.7e9 + i, "user_id": f"u{i % 7}", "item_id": f"i{i % 11}",
     "context": {"device": ("ios", "web")[i % 2], "hour": i % 24}}
    for i in range(40)
]  # fmt: skip


@pytest.fixture(scope="module")
def clicks_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clicks")
    _, p = train("clicks", cases()["clicks"], tmp / "ckpt")
    (f,) = (tmp / "ckpt" / p.name).glob("ckpt-*.pt")
    return f


def predict_scores(path):
    """What /predict answers for PROBES, with the pipeline a restart restores."""
    p = restored(path)
    pub = Publisher(every_s=0.0)
    pub.publish(p.learner)
    res = Scorer(p.spec, pub).score(PROBES)
    assert not res.errors and res.version == p.learner.updates > 0
    return p, np.asarray(res.scores, np.float64)


def test_onnx_scores_what_predict_serves(clicks_file, tmp_path, capsys):
    assert main(["checkpoint", "export", str(clicks_file), "--format", "onnx",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    p, want = predict_scores(clicks_file)
    inputs = p.featurizer.featurize([{**e, "label": 0} for e in PROBES]).inputs
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"))
    (got,) = sess.run(None, {i.name: inputs[i.name] for i in sess.get_inputs()})
    assert np.max(np.abs(got.astype(np.float64) - want)) <= 1e-5
    assert 0.05 < want.min() < want.max() < 0.95  # the model's own, not a constant
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["kind"] == "clicks" and card["model_version"] == p.learner.updates
    assert card["inputs"]["ctx"] == {"dtype": "int64", "shape": ["batch", 8]}
    assert card["input_spec"]["id_buckets"] == 512 and card["format"] == "onnx"


def test_safetensors_are_the_weights(clicks_file, tmp_path):
    assert main(["checkpoint", "export", str(clicks_file), "--format", "safetensors",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    weights = load_file(str(tmp_path / "model.safetensors"))
    doc = torch.load(clicks_file, weights_only=True)
    model = doc["learner"]["model"]
    assert weights.keys() == model.keys()
    assert all(torch.equal(weights[k], model[k]) for k in model)


def test_a_file_from_before_0_2_0_needs_its_config(tmp_path, capsys):
    old = HERE / "93b9173" / "clicks" / "ckpt" / "clicks"
    assert main(["checkpoint", "export", str(old), "--format", "onnx",
                 "--out", str(tmp_path)]) == 2  # fmt: skip
    assert "--config" in capsys.readouterr().err
    record = json.loads((HERE / "93b9173" / "clicks" / "case.json").read_text())
    cfg = tmp_path / "pipelines.yaml"
    cfg.write_text(yaml.safe_dump(record["settings"]))
    assert main(["checkpoint", "export", str(old), "--format", "onnx", "--out",
                 str(tmp_path / "out"), "--config", str(cfg)]) == 0  # fmt: skip
    assert (tmp_path / "out" / "model.onnx").stat().st_size > 0


def test_a_head_whose_baseline_reads_the_inputs_is_no_single_graph(tmp_path, capsys):
    _, p = train("ticks", cases()["ticks"], tmp_path / "ckpt")
    (f,) = (tmp_path / "ckpt" / p.name).glob("ckpt-*.pt")
    assert main(["checkpoint", "export", str(f), "--format", "onnx",
                 "--out", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "safetensors" in capsys.readouterr().err
    assert main(["checkpoint", "export", str(f), "--format", "safetensors",
                 "--out", str(tmp_path / "s")]) == 0  # fmt: skip
