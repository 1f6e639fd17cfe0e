"""Checkpoints written by real earlier releases restore in this one (no broker).

Each fixture under ``tests/fixtures/checkpoints/<commit>/<case>/`` was written by that
commit's own code (``regenerate.py`` beside them says how). Today's pipeline, built from
the same settings, restores it through the migrations of ``checkpoint/versions.py`` and
must hold exactly what the old release held: offsets, ledger, joiner state, the model's
weights and the optimizers' state, the featurizer's state, the model version, and the
old release's scores on probe events. What a migration cannot carry (said in the log):
the 2026-11-30 duplicate window, whose digests another hash made.
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from fixtures.checkpoints.regenerate import HERE as FIXTURES
from fixtures.checkpoints.regenerate import RELEASES

from stream_trainer.checkpoint.versions import FORMAT_VERSION, on_disk_version
from stream_trainer.config import parse_settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.pipeline.core import Pipeline

CASES = sorted(
    (commit, d.name) for commit in RELEASES for d in (FIXTURES / commit).iterdir() if d.is_dir()
)


def same(a, b, path=""):
    """Equal, leaf by leaf (tensors exactly), with the first difference's path."""
    if isinstance(a, torch.Tensor | np.ndarray) or isinstance(b, torch.Tensor | np.ndarray):
        ta, tb = torch.as_tensor(a), torch.as_tensor(b)
        assert ta.shape == tb.shape and torch.equal(ta, tb.to(ta.dtype)), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), path
        for k in a:
            same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def restored(tmp_path, commit, case):
    """(the old document, today's pipeline restored from it, the case's record)."""
    src = FIXTURES / commit / case
    record = json.loads((src / "case.json").read_text())
    shutil.copytree(src / "ckpt", tmp_path / "ckpt")
    raw = {**record["settings"], "checkpoint": {"dir": str(tmp_path / "ckpt")}}
    settings = parse_settings(raw)
    (path,) = (tmp_path / "ckpt" / record["pipeline"]).glob("ckpt-*.pt")
    old = torch.load(path, weights_only=True)
    p = Pipeline(settings, settings.pipelines[0])
    assert p.restore()
    return old, p, record


def test_every_release_has_fixtures_of_each_kind():
    for commit in RELEASES:
        cases = {c for k, c in CASES if k == commit}
        assert {"clicks", "ticks", "sensors"} <= cases, (commit, cases)
    assert "clicks_joined" in {c for k, c in CASES if k == "e1fb2d7"}  # labels: since 12-07
    for commit, case in CASES:  # small enough to commit, and of the version said
        (f,) = (FIXTURES / commit / case / "ckpt").glob("*/ckpt-*.pt")
        assert f.stat().st_size < 512 * 1024, f
        assert on_disk_version(torch.load(f, weights_only=True)) == RELEASES[commit]


@pytest.mark.parametrize(("commit", "case"), CASES, ids=[f"{k}-{c}" for k, c in CASES])
def test_a_release_checkpoint_restores_whole(tmp_path, caplog, commit, case):
    with caplog.at_level(logging.INFO, logger="stream_trainer.pipeline.state"):
        old, p, record = restored(tmp_path, commit, case)
    (upgraded,) = [r for r in caplog.records if r.getMessage() == "checkpoint upgraded"]
    assert upgraded.from_format == RELEASES[commit] and upgraded.to_format == FORMAT_VERSION
    # never lost: where the log stands, and what the joiner holds
    same(p.offsets.state(), {"offsets": old["offsets"], "ledger": old["ledger"]})
    assert p.counters["trained"] == old["counters"]["trained"] == record["trained"]
    if "joiner" in old:
        same(p.joiner.state_dict(), old["joiner"])
    if RELEASES[commit] >= 2:
        same(p.dedup.state_dict(), old["dedup"])
    else:  # blake2b digests: today's never match them, and the log says the window restarts
        assert len(old["dedup"]["digests"]) > 0 and len(p.dedup.state_dict()["digests"]) == 0
        assert "duplicate window starts afresh" in upgraded.not_carried
    # carried: the weights, the optimizers' state, the featurizer, the model version
    weights = dict(p.learner.model.state_dict())
    if RELEASES[commit] == 1 and case == "sensors":  # the skip path now adds to persistence
        w, w_old = weights.pop("linear.weight"), old["learner"]["model"]["linear.weight"]
        c = w.shape[0]
        shift = torch.zeros_like(w)
        shift[torch.arange(c), w.shape[1] - c + torch.arange(c)] = 1.0  # the last reading
        torch.testing.assert_close(w + shift, w_old, rtol=0, atol=1e-6)  # (w - 1) + 1: rounding
    same(weights, {k: v for k, v in old["learner"]["model"].items() if k in weights})
    assert weights.keys() <= old["learner"]["model"].keys()
    for part, opt in old["learner"]["optimizer"].items():
        same(p.learner.optimizer.state_dict()[part]["state"], opt["state"], f"/{part}")
    same(p.featurizer.state_dict(), old["featurizer"])
    assert p.learner.updates == old["learner"]["updates"] > 0
    # the old release's scores on the probe events, from the restored state: the model's
    # own (the mixture with the trivial baselines, which the old releases lacked, starts
    # afresh); sensors' migrated skip path sums in another order: a float32 rounding
    fb = p.featurizer.featurize(record["probes"])
    scores = np.asarray(p.learner.predict(fb.inputs, mixed=False), np.float64)
    np.testing.assert_allclose(scores, np.asarray(record["scores"]), rtol=1e-5, atol=1e-6)
    # and it saves in today's format
    assert p.state()["learner"].keys() >= {"baseline", "mixture"}


def test_the_changelog_says_what_this_release_does_to_checkpoints():
    from support import REPO

    from stream_trainer import __version__

    text = (REPO / "CHANGELOG.md").read_text()
    table = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in text.splitlines()
             if r.startswith("| ") and not r.startswith("| release")}  # fmt: skip
    # the newest row (changes not yet released, else this release): today's format
    assert table.get("Unreleased", table[__version__]) == str(FORMAT_VERSION)
    assert f"\n## {__version__} " in text and "**Upgrading.**" in text
    for commit in RELEASES:  # every release with fixtures has an entry
        assert f"({commit})\n" in text


# ---- a config change between two runs --------------------------------------------------
def changed(tmp_path, **pipeline):
    """The 2026-12-07 clicks fixture restored under a config changed by ``pipeline``."""
    src = FIXTURES / "e1fb2d7" / "clicks"
    record = json.loads((src / "case.json").read_text())
    shutil.copytree(src / "ckpt", tmp_path / "ckpt")
    spec = {**record["settings"]["pipelines"][0], **pipeline}
    raw = {**record["settings"], "pipelines": [spec], "checkpoint": {"dir": str(tmp_path / "ckpt")}}
    settings = parse_settings(raw)
    (path,) = (tmp_path / "ckpt" / record["pipeline"]).glob("ckpt-*.pt")
    p = Pipeline(settings, settings.pipelines[0])
    assert p.restore()
    return torch.load(path, weights_only=True), p


def test_the_config_s_learning_rates_apply_to_the_carried_optimizer(tmp_path):
    old, p = changed(tmp_path, optimizer={"lr": 0.01, "embedding_lr": 0.2})
    lrs = {k: [g["lr"] for g in o.param_groups] for k, o in p.learner.optimizer.parts.items()}
    assert lrs == {"dense": [0.01], "sparse": [0.2]}  # not the checkpoint's 0.003 / 0.1
    for part, opt in old["learner"]["optimizer"].items():  # the moments carried
        same(p.learner.optimizer.state_dict()[part]["state"], opt["state"], f"/{part}")


@pytest.mark.parametrize(
    ("change", "afresh"),
    [({"drift": {"detector": "adwin"}}, "drift detector (page_hinkley -> adwin)")],
    ids=["detector"],
)
def test_a_config_change_starts_only_what_it_changed_afresh(tmp_path, caplog, change, afresh):
    with caplog.at_level(logging.WARNING, logger="stream_trainer.pipeline.state"):
        old, p = changed(tmp_path, **change)
    (note,) = [r for r in caplog.records if r.getMessage().startswith("config changed")]
    assert afresh in note.afresh
    same(p.offsets.state(), {"offsets": old["offsets"], "ledger": old["ledger"]})
    same(p.dedup.state_dict(), old["dedup"])
    same(p.learner.model.state_dict(), old["learner"]["model"])
    same(p.learner.baseline.state_dict(), old["learner"]["baseline"])
    assert p.learner.updates == old["learner"]["updates"]


def test_switching_to_dense_embedding_gradients_carries_the_optimizer(tmp_path, caplog):
    """``sparse_embeddings: false`` (a GPU's default) keeps the optimizer's layout: the
    tables' Adagrad state, written with sparse gradients on the CPU, carries as it is."""
    with caplog.at_level(logging.WARNING, logger="stream_trainer.pipeline.state"):
        old, p = changed(tmp_path, optimizer={"sparse_embeddings": False})
    assert not [r for r in caplog.records if r.getMessage().startswith("config changed")]
    assert not p.learner.sparse_grads
    for part, opt in old["learner"]["optimizer"].items():  # the moments carried, both parts
        same(p.learner.optimizer.state_dict()[part]["state"], opt["state"], f"/{part}")
    same(p.learner.model.state_dict(), old["learner"]["model"])


def test_a_new_model_shape_on_a_file_without_its_settings_is_refused_with_what_to_do(tmp_path):
    """A file from before 0.2.0 does not say which settings built its model, so a new
    shape cannot race it (tests/test_reshape.py: one that does): refused, saying how."""
    with pytest.raises(StreamTrainerError, match="run once with the old config"):
        changed(tmp_path, model={"dim": 8, "hidden": 32})


def test_a_by_key_model_file_of_2026_11_30_loads_as_it_is_used(tmp_path):
    """A by_key shard keeps a manifest in its checkpoint and one file per key's model,
    loaded when the key's next event comes: an old release's file is upgraded then. The
    file here is a real one's content: the 2026-11-30 ticks learner (a per-key file holds
    exactly a learner's state), under a shard checkpoint of that release's format."""
    src = FIXTURES / "93b9173" / "ticks"
    record = json.loads((src / "case.json").read_text())
    (path,) = (src / "ckpt" / "ticks").glob("ckpt-*.pt")
    old = torch.load(path, weights_only=True)
    spec = {**record["settings"]["pipelines"][0], "partitioning": "by_key"}
    settings = parse_settings({**record["settings"], "pipelines": [spec],
                               "checkpoint": {"dir": str(tmp_path / "ckpt")}})  # fmt: skip
    shard = Pipeline(settings, settings.pipelines[0], shard=("events", 0))
    models = shard.learner.dir
    models.mkdir(parents=True)
    per_key = {k: v for k, v in old["learner"].items() if k != "replay"}
    torch.save(per_key, models / "model-old.pt")
    updates = int(per_key["updates"])
    manifest = {
        "keys": ["AAPL"], "files": ["model-old.pt"], "updates": torch.tensor([updates]),
        "version": 1, "total_updates": updates, "lr_multiplier": 1.0, "replay": {},
    }  # fmt: skip
    doc = {**old, "learner": manifest, "pipeline": shard.store.pipeline,
           "offsets": {"events:0": 1200}, "ledger": {}}  # fmt: skip
    shard.store.dir.mkdir(parents=True, exist_ok=True)
    torch.save(doc, shard.store.dir / "ckpt-000000000001.pt")  # format 1, as it was
    q = Pipeline(settings, settings.pipelines[0], shard=("events", 0))
    assert q.restore()
    learner = q.learner.model("AAPL")  # the old file, upgraded as it loads
    same(learner.model.state_dict(), per_key["model"])
    assert learner.updates == updates and learner.mixture is not None
