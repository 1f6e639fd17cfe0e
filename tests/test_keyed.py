"""by_key models: one small learner per key, bounded in memory, exact across eviction."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from stream_trainer.learner import Learner
from stream_trainer.learner.keyed import KeyedLearner
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.producers import make_generator


def setup(tmp_path, max_models: int):
    feat = build_featurizer("ticks", {"window": 8})

    def factory() -> Learner:
        torch.manual_seed(0)
        return Learner(build_model("ticks", {}, feat), feat.task, lr=0.01)

    events = list(make_generator("ticks", seed=1, count=3000, n_symbols=4))
    batches = [feat.featurize(events[i : i + 100]) for i in range(0, len(events), 100)]
    return KeyedLearner(factory, tmp_path / "models", max_models, lr=0.01), batches


def test_evicted_models_come_back_exactly_and_memory_stays_bounded(tmp_path):
    bounded, batches = setup(tmp_path / "a", max_models=1)
    roomy, _ = setup(tmp_path / "b", max_models=100)
    for k, fb in enumerate(batches):
        ra = bounded.step(fb.inputs, fb.targets, keys=fb.keys)
        rb = roomy.step(fb.inputs, fb.targets, keys=fb.keys)
        np.testing.assert_array_equal(ra.losses, rb.losses)  # same predictions, same losses
        if k % 3 == 2:  # checkpoints: saved models become evictable
            bounded.state_dict()
            bounded.saved()
            roomy.state_dict()
            roomy.saved()
        # learning models are never dropped; saved ones go down to the bound
        assert len(bounded.resident) <= 1 + len(bounded.dirty)
    assert len(bounded) == len(roomy) == 4 and bounded.evictions > 0
    assert bounded.updates == roomy.updates


def test_the_manifest_restores_every_key_and_old_files_are_removed(tmp_path):
    keyed, batches = setup(tmp_path, max_models=10)
    for fb in batches[:20]:
        keyed.step(fb.inputs, fb.targets, keys=fb.keys)
        state = keyed.state_dict()
        keyed.saved()
    files = sorted(p.name for p in (tmp_path / "models").glob("model-*.pt"))
    assert len(files) <= 4 * (keyed.keep + 1)  # each key's latest + a few superseded ones
    again, _ = setup(tmp_path, max_models=10)
    again.load_state_dict(copy.deepcopy(state))
    assert again.updates == keyed.updates and len(again) == 4
    fb = batches[20]
    np.testing.assert_array_equal(
        keyed.step(fb.inputs, fb.targets, keys=fb.keys).losses,
        again.step(fb.inputs, fb.targets, keys=fb.keys).losses,
    )


def test_rows_without_keys_are_a_clear_error(tmp_path):
    keyed, batches = setup(tmp_path, max_models=2)
    with pytest.raises(ValueError, match="by_key needs a featurizer"):
        keyed.step(batches[0].inputs, batches[0].targets, keys=None)
