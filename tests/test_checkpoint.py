from __future__ import annotations

import logging

import pytest
import torch

from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.errors import CheckpointError


def state(n: int) -> dict:
    return {
        "kind": "clicks",
        "settings": "{}",
        "learner": {"w": torch.full((3,), float(n))},
        "featurizer": {},
        "drift": {},
        "policy": {},
        "offsets": {"t:0": n},
        "ledger": {},
        "dedup": {},
        "counters": {"trained": n},
        "reshape": {},
    }


def test_round_trip_keeps_the_last_k(tmp_path):
    store = CheckpointStore(tmp_path, "p", keep=2)
    for n in range(1, 5):
        store.save(state(n))
    assert [p.name for p in store.files()] == ["ckpt-000000000003.pt", "ckpt-000000000004.pt"]
    doc = store.load_latest()
    assert doc["offsets"] == {"t:0": 4} and doc["pipeline"] == "p"
    assert torch.equal(doc["learner"]["w"], torch.full((3,), 4.0))
    assert not [p for p in (tmp_path / "p").iterdir() if p.name.startswith(".")]  # no temps


def test_no_checkpoint_means_none(tmp_path):
    assert CheckpointStore(tmp_path, "p").load_latest() is None


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path, "p", keep=3)
    store.save(state(1))
    newest = store.save(state(2))
    newest.write_bytes(newest.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        doc = store.load_latest()
    assert doc["offsets"] == {"t:0": 1}
    assert "skipping unreadable checkpoint" in caplog.text


class Smuggled:
    """Stands for any object whose unpickling could run code."""


def test_only_weights_are_loaded(tmp_path):
    """A checkpoint smuggling an arbitrary object is refused, never unpickled."""
    store = CheckpointStore(tmp_path, "p")
    store.save(state(1))
    evil = tmp_path / "p" / "ckpt-000000000002.pt"
    torch.save(
        {
            **state(2),
            "format_version": 1,
            "pipeline": "p",
            "created": 0.0,
            "learner": {"obj": Smuggled()},
        },
        evil,
    )
    doc = store.load_latest()
    assert doc["offsets"] == {"t:0": 1}


def test_keys_are_strict(tmp_path):
    store = CheckpointStore(tmp_path, "p")
    with pytest.raises(ValueError, match="unknown"):
        store.save({**state(1), "extra": 1})
    path = tmp_path / "p" / "ckpt-000000000001.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format_version": 1, "pipeline": "p"}, path)
    assert store.load_latest() is None  # missing keys: unusable, and we say so


def test_another_pipelines_checkpoint_is_not_loaded(tmp_path):
    CheckpointStore(tmp_path, "a").save(state(1))
    (tmp_path / "a").rename(tmp_path / "b")
    assert CheckpointStore(tmp_path, "b").load_latest() is None


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        CheckpointStore(blocker, "p").save(state(1))


def test_garbage_newest_falls_back_with_a_warning(tmp_path, caplog):
    store = CheckpointStore(tmp_path, "p", keep=3)
    store.save(state(1))
    store.save(state(2))
    (tmp_path / "p" / "ckpt-000000000003.pt").write_bytes(bytes(range(256)) * 10)
    with caplog.at_level(logging.WARNING):
        assert store.load_latest()["offsets"] == {"t:0": 2}
    assert any(getattr(r, "path", "").endswith("ckpt-000000000003.pt") for r in caplog.records)
