"""One contract suite over every built-in featurizer/model pair (river checks/common.py style)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from stream_trainer.domains.decoders import decoder_for
from stream_trainer.errors import PluginError
from stream_trainer.models.registry import build_featurizer, build_model
from stream_trainer.producers import make_generator

KINDS = ["clicks", "ticks", "sensors"]


def events(kind: str, n: int = 300, seed: int = 0) -> list[dict]:
    dec = decoder_for(kind, channels=("temp", "humidity", "pressure"))
    return [dec(json.dumps(e).encode()) for e in make_generator(kind, seed=seed, count=n)]


def assert_batches_equal(a, b):
    assert a.inputs.keys() == b.inputs.keys()
    for k in a.inputs:
        np.testing.assert_array_equal(a.inputs[k], b.inputs[k])
    np.testing.assert_array_equal(a.targets, b.targets)
    np.testing.assert_array_equal(a.index, b.index)


@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_continues_identically(kind):
    evs = events(kind)
    f1 = build_featurizer(kind, {})
    f1.featurize(evs[:150])
    f2 = build_featurizer(kind, {})
    f2.load_state_dict(copy.deepcopy(f1.state_dict()))
    assert_batches_equal(f1.featurize(evs[150:]), f2.featurize(evs[150:]))


@pytest.mark.parametrize("kind", KINDS)
def test_state_survives_weights_only_serialisation(kind, tmp_path):
    evs = events(kind)
    f1 = build_featurizer(kind, {})
    f1.featurize(evs[:150])
    torch.save(f1.state_dict(), tmp_path / "s.pt")
    f2 = build_featurizer(kind, {})
    f2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    assert_batches_equal(f1.featurize(evs[150:]), f2.featurize(evs[150:]))


@pytest.mark.parametrize("kind", KINDS)
def test_featurizing_does_not_mutate_input_and_is_deterministic(kind):
    evs = events(kind)
    before = copy.deepcopy(evs)
    a = build_featurizer(kind, {}).featurize(evs)
    assert evs == before
    assert_batches_equal(a, build_featurizer(kind, {}).featurize(evs))


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_dtypes_and_finite_values(kind):
    f = build_featurizer(kind, {})
    fb = f.featurize(events(kind))
    assert len(fb) > 0 and fb.targets.shape[0] == len(fb)
    for v in fb.inputs.values():
        assert v.shape[0] == len(fb) and v.dtype in (np.float32, np.int64)
        assert np.isfinite(v).all()
    assert np.isfinite(fb.targets).all()
    model = build_model(kind, {}, f)
    out = model(**{k: torch.from_numpy(v) for k, v in fb.inputs.items()})
    assert out.shape == fb.targets.shape


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_model_construction_is_deterministic(kind):
    f = build_featurizer(kind, {})
    torch.manual_seed(1)
    a = build_model(kind, {}, f).state_dict()
    torch.manual_seed(1)
    b = build_model(kind, {}, f).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["ticks", "sensors"])
def test_load_refuses_a_different_shape(kind):
    f = build_featurizer(kind, {})
    f.featurize(events(kind, 50))
    other = build_featurizer(kind, {"window": 8})
    with pytest.raises(ValueError, match="changed"):
        other.load_state_dict(f.state_dict())


def test_empty_batches_are_fine():
    for kind in KINDS:
        fb = build_featurizer(kind, {}).featurize([])
        assert len(fb) == 0


def test_plugins_by_import_path():
    f = build_featurizer("custom", "plugin_example:MeanFeaturizer")
    m = build_model("custom", "plugin_example:build", f)
    assert isinstance(m, torch.nn.Module)


@pytest.mark.parametrize(
    "path,msg",
    [
        ("no_such_pkg.mod:build", "cannot import model factory module 'no_such_pkg.mod'"),
        ("plugin_example:nope", "has no 'nope'"),
        ("plugin_example", "must look like 'pkg.module:name'"),
        ("plugin_example:NOT_A_MODULE", "bad parameters"),
    ],
)
def test_plugin_errors_are_clear(path, msg):
    f = build_featurizer("custom", "plugin_example:MeanFeaturizer")
    with pytest.raises(PluginError, match=msg):
        build_model("custom", path, f)


# ---- learners (model + optimizers) and drift detectors --------------------------------
def learner_for(kind: str):
    from stream_trainer.learner import Learner

    f = build_featurizer(kind, {})
    fbs = [f.featurize(evs) for evs in np.array_split(np.array(events(kind, 600)), 6)]
    torch.manual_seed(0)
    return Learner(build_model(kind, {}, f), f.task), [b for b in fbs if len(b)]


@pytest.mark.parametrize("kind", KINDS)
def test_learner_state_round_trip_through_a_checkpoint_continues_identically(kind, tmp_path):
    """Model and both optimizers (Adagrad on sparse embeddings, Adam elsewhere)."""
    a, batches = learner_for(kind)
    for fb in batches[:3]:
        a.step(fb.inputs, fb.targets)
    torch.save(a.state_dict(), tmp_path / "l.pt")
    b, _ = learner_for(kind)
    b.load_state_dict(torch.load(tmp_path / "l.pt", weights_only=True))
    for fb in batches[3:]:
        ra, rb = a.step(fb.inputs, fb.targets), b.step(fb.inputs, fb.targets)
        np.testing.assert_array_equal(ra.losses, rb.losses)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kind", KINDS)
def test_learning_is_seeded_and_does_not_mutate_its_inputs(kind):
    a, batches = learner_for(kind)
    b, _ = learner_for(kind)
    for fb in batches:
        before = copy.deepcopy((fb.inputs, fb.targets))
        ra, rb = a.step(fb.inputs, fb.targets), b.step(fb.inputs, fb.targets)
        np.testing.assert_array_equal(ra.outputs, rb.outputs)
        for k, v in before[0].items():
            np.testing.assert_array_equal(fb.inputs[k], v)
        np.testing.assert_array_equal(fb.targets, before[1])


DETECTORS = ["page_hinkley", "adwin", "kswin", "ddm", "eddm", "hddm_a", "hddm_w"]


def losses(n: int = 60_000, seed: int = 0) -> list[np.ndarray]:
    """Per-event losses with a step up midway, in updates of 100 events."""
    rng = np.random.default_rng(seed)
    level = np.where(np.arange(n) < n // 2, 0.5, 0.65)
    return np.split(level + rng.normal(0, 0.05, n), n // 100)


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_state_round_trip_continues_identically(detector):
    from stream_trainer.drift import DriftMonitor

    seq = losses()
    params = {"seed": 1} if detector == "kswin" else {}
    a = DriftMonitor(detector, params)
    for x in seq[:250]:
        a.update(x)
    b = DriftMonitor(detector, params)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert [a.update(x) for x in seq[250:]] == [b.update(x) for x in seq[250:]]
    assert a.detections == b.detections >= 1


@pytest.mark.parametrize("detector", DETECTORS)
def test_detector_is_deterministic_and_leaves_its_input_alone(detector):
    from stream_trainer.drift import DriftMonitor

    seq = losses(seed=3)
    before = [x.copy() for x in seq]
    params = {"seed": 1} if detector == "kswin" else {}
    m1, m2 = DriftMonitor(detector, params), DriftMonitor(detector, params)
    assert [m1.update(x) for x in seq] == [m2.update(x) for x in seq]
    assert all(np.array_equal(x, y) for x, y in zip(seq, before, strict=True))
