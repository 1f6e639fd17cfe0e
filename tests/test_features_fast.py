"""The batch featurizers give exactly the features of the plain per-event references
(today's featurizers before they were vectorised), on the same events: clicks against
``reference`` below, ticks and sensors against ``legacy_featurizers``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from legacy_featurizers import LegacySensorFeaturizer, LegacyTickFeaturizer

from stream_trainer.domains.decoders import decoder_for
from stream_trainer.features import clicks as clicks_mod
from stream_trainer.features.base import stable_hash
from stream_trainer.features.clicks import ClickFeaturizer
from stream_trainer.features.sensors import SensorFeaturizer
from stream_trainer.features.ticks import TickFeaturizer
from stream_trainer.producers.generators import make_generator


def reference(f: ClickFeaturizer, events: list[dict]) -> dict[str, np.ndarray]:
    n, m = len(events), f.max_context
    out = {
        "user": np.empty(n, np.int64),
        "item": np.empty(n, np.int64),
        "pair": np.zeros(n, np.int64),
        "ctx": np.zeros((n, m), np.int64),
        "ctx_w": np.zeros((n, m), np.float32),
        "label": np.empty(n, np.float32),
    }
    for i, ev in enumerate(events):
        u, it = ev["user_id"], ev["item_id"]
        out["user"][i] = stable_hash(u, f.id_buckets, f.salt)
        out["item"][i] = stable_hash(it, f.id_buckets, f.salt + 1)
        out["pair"][i] = stable_hash(f"{u}\x1f{it}", f.pair_buckets, f.salt + 2)
        out["label"][i] = ev["label"]
        for j, (k, v) in enumerate(sorted((ev.get("context") or {}).items())[:m]):
            if isinstance(v, float):
                tok = stable_hash(k, f.context_buckets, f.salt), max(-10.0, min(10.0, v))
            else:
                tok = stable_hash(f"{k}={v}", f.context_buckets, f.salt), 1.0
            out["ctx"][i, j], out["ctx_w"][i, j] = tok
    return out


AB = {"ts": 1.0, "user_id": "a", "item_id": "b"}
ODD = [
    {**AB, "label": 1, "context": {"x": 1, "y": 1.0, "z": True}},
    {**AB, "label": 0, "context": {"x": 1.0, "y": 1, "z": "True"}},
    {**AB, "label": 0},
    {**AB, "label": 0, "context": {}},
    {**AB, "user_id": "c", "label": 1, "context": {"w": 99.0, "a": "x"}},
]


@pytest.mark.parametrize("max_context,cache_max", [(8, 1 << 20), (2, 1 << 20), (8, 40)])
def test_click_features_equal_the_reference(monkeypatch, max_context, cache_max):
    monkeypatch.setattr(clicks_mod, "HASH_CACHE_MAX", cache_max)  # 40: caches clear often
    dec = decoder_for("clicks")
    events = [dec(json.dumps(e).encode()) for e in make_generator("clicks", seed=5, count=3000)]
    events += ODD + [{**e, "context": {**e["context"], "score": 0.1 * i}} for i, e in
                     enumerate(events[:200])]  # fmt: skip
    f = ClickFeaturizer(max_context=max_context)
    for start in range(0, len(events), 257):
        batch = events[start : start + 257]
        fb, ref = f.featurize(batch), reference(f, batch)
        for name in ("user", "item", "pair", "ctx", "ctx_w"):
            np.testing.assert_array_equal(fb.inputs[name], ref[name], err_msg=name)
        np.testing.assert_array_equal(fb.targets, ref["label"])
        assert fb.keys == [e["user_id"] for e in batch]
        assert fb.index.tolist() == list(range(len(batch)))


def _same_batches(new, old, events, sizes) -> int:
    """Feed both featurizers the same batches; every field of every batch, and the state
    after it, must be identical (not merely close). Returns the examples compared."""
    compared, start, k = 0, 0, 0
    while start < len(events):
        batch = events[start : start + sizes[k % len(sizes)]]
        start, k = start + len(batch), k + 1
        a, b = new.featurize(batch), old.featurize(batch)
        assert a.inputs.keys() == b.inputs.keys()
        for name in a.inputs:
            assert a.inputs[name].dtype == b.inputs[name].dtype, name
            np.testing.assert_array_equal(a.inputs[name], b.inputs[name], err_msg=name)
        for name in ("targets", "index", "scale", "shift"):
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        assert a.keys == b.keys
        for name, arr in new.slots.arrays.items():
            np.testing.assert_array_equal(arr, old.slots.arrays[name], err_msg=name)
        assert new.slots.slot == old.slots.slot
        compared += len(a)
    return compared


# batch sizes: one event at a time, odd sizes, and batches where a key repeats many times
SIZES = [1, 7, 256, 3, 1024, 64]


@pytest.mark.parametrize("symbols", [1, 8, 300])
def test_tick_features_equal_the_per_event_featurizer(symbols):
    events = list(make_generator("ticks", seed=4, count=6000, n_symbols=symbols))
    events[100] = {**events[100], "price": events[99]["price"]}  # a zero return
    f, ref = TickFeaturizer(), LegacyTickFeaturizer()
    assert _same_batches(f, ref, events, SIZES) > 4000
    state = f.state_dict()  # the checkpoint round-trips into the batch featurizer
    g = TickFeaturizer()
    g.load_state_dict(state)
    assert _same_batches(g, ref, list(make_generator("ticks", seed=5, count=500,
                                                     n_symbols=symbols)), [256]) > 0  # fmt: skip


@pytest.mark.parametrize("sensors", [1, 20, 500])
def test_sensor_features_equal_the_per_event_featurizer(sensors):
    events = list(make_generator("sensors", seed=4, count=6000, n_sensors=sensors,
                                 anomaly_rate=0.01, level_shift_rate=0.001))  # fmt: skip
    f, ref = SensorFeaturizer(), LegacySensorFeaturizer()
    assert _same_batches(f, ref, events, SIZES) > 4000
    g = SensorFeaturizer()
    g.load_state_dict(f.state_dict())
    more = list(make_generator("sensors", seed=5, count=500, n_sensors=sensors))
    assert _same_batches(g, ref, more, [256]) > 0
