"""The click featurizer's batch path gives exactly the features of the plain per-event
reference below (today's featurizer before it was vectorised), on the same events."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stream_trainer.events.decode import decoder_for
from stream_trainer.features import clicks as clicks_mod
from stream_trainer.features.base import stable_hash
from stream_trainer.features.clicks import ClickFeaturizer
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
