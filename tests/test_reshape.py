"""A config change of the model's shape between two runs (no broker: the real loop over
in-memory partitions): the restored model stays champion and trains from the first
poll, a model of the new shape races it on the same events and takes over when it wins
(pipeline/reshape.py); the ledger stays exact; a restart mid-race resumes the race."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import numpy as np
import torch
from fakes import ListSink, ListSource, run_until
from prometheus_client import CollectorRegistry

from stream_trainer.checkpoint.summary import ledger_ranges, render, summarize
from stream_trainer.config import parse_settings
from stream_trainer.metrics import Metrics
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.reshape import carry
from stream_trainer.producers import make_generator
from stream_trainer.serving.process import Slots

FIRST, SECOND = 300, 400  # events per partition in run 1, then in run 2


def stream() -> dict[tuple[str, int], list[bytes]]:
    events = list(make_generator("clicks", seed=7, count=2 * (FIRST + SECOND)))
    parts: dict[tuple[str, int], list[bytes]] = {("events", 0): [], ("events", 1): []}
    for i, e in enumerate(events):
        parts[("events", i % 2)].append(json.dumps(e).encode())
    return parts


def pipeline(ckpt, hidden, buckets, *, window=100, registry=None):
    s = parse_settings({
        "checkpoint": {"dir": str(ckpt), "every_seconds": 3600},
        "device": "cpu",
        "pipelines": [{
            "name": "clicks", "kind": "clicks", "topics": ["events"], "output_topic": "out",
            "featurizer": {"id_buckets": buckets, "context_buckets": 64, "pair_buckets": 512},
            "model": {"dim": 8, "hidden": hidden},
            "batch": {"max_size": 64, "max_latency_ms": 0},
            "drift": {"challenger_window": window},
        }],
    })  # fmt: skip
    hooks = Metrics(registry).pipeline("clicks") if registry is not None else None
    return Pipeline(s, s.pipelines[0], hooks=hooks)


def run(p, data, upto, stop_after_polls=None):
    """Run ``p`` over ``data[:upto]`` per partition from its restored offsets."""
    source = ListSource({tp: v[:upto] for tp, v in data.items()}, p.offsets.resume())
    sink = ListSink()
    run_until(p, source, sink, stop_after_polls)
    return {(d["partition"], d["offset"]): d["loss"] for _, d in sink.outputs}


def newest(ckpt):
    return torch.load(sorted((ckpt / "clicks").glob("ckpt-*.pt"))[-1], weights_only=True)


def first_run(tmp_path):
    data = stream()
    run(pipeline(tmp_path / "a", 16, 512), data, FIRST)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    return data


def test_a_new_shape_races_the_restored_model_and_takes_over_when_it_wins(tmp_path, caplog):
    data = first_run(tmp_path)
    reg = CollectorRegistry()
    changed = pipeline(tmp_path / "a", 32, 1024, registry=reg)  # hidden x2, id_buckets x2
    with caplog.at_level(logging.INFO, logger="stream_trainer.pipeline.reshape"):
        assert changed.restore()
        r = changed.reshape
        assert r is not None and r.race.active and r.paired
        champion = changed.learner
        assert champion.model.mlp[0].out_features == 16  # the restored model, unchanged
        assert changed.featurizer.id_buckets == 512  # with its own featurizer
        assert reg.get_sample_value("stream_trainer_challenger_racing",
                                    {"pipeline": "clicks", "cause": "config"}) == 1.0  # fmt: skip
        got = run(changed, data, FIRST + SECOND)
    same = pipeline(tmp_path / "b", 16, 512)
    assert same.restore() and same.reshape is None
    want = run(same, data, FIRST + SECOND)

    # trained from the first poll: every event of run 2 trained and emitted, once
    assert changed.counters["trained"] - same.counters["trained"] == 0
    assert sorted(got) == sorted(want) and len(got) == 2 * SECOND
    assert ledger_ranges(newest(tmp_path / "a")) == {
        "events:0": [(0, FIRST + SECOND)], "events:1": [(0, FIRST + SECOND)]
    }  # fmt: skip
    # the race: the new shape won (and the config applies), shown in the metrics and log
    assert changed.reshape is None and changed.learner is not champion
    assert changed.learner.model.mlp[0].out_features == 32
    assert changed.featurizer.id_buckets == 1024 and changed.spec.model["hidden"] == 32
    outcome = {"pipeline": "clicks", "outcome": "promoted"}
    assert reg.get_sample_value("stream_trainer_challenger_outcomes_total", outcome) == 1.0
    assert reg.get_sample_value("stream_trainer_challenger_racing",
                                {"pipeline": "clicks", "cause": "config"}) == 0.0  # fmt: skip
    assert any(m.getMessage().startswith("config applied") for m in caplog.records)
    # until it won, the champion scored exactly as the unchanged run; the loss over run 2
    # within 1 % of the unchanged run's
    order = sorted(got, key=lambda k: (k[1], k[0]))
    before = order[: r.race.window]
    assert [got[k] for k in before] == [want[k] for k in before]
    ratio = np.mean(list(got.values())) / np.mean(list(want.values()))
    assert ratio <= 1.01, ratio
    # the checkpoint holds the new settings and no race; a restart races nothing
    doc = newest(tmp_path / "a")
    assert doc["reshape"] == {} and json.loads(doc["settings"])["model"]["hidden"] == 32
    again = pipeline(tmp_path / "a", 32, 1024)
    assert again.restore() and again.reshape is None


def test_a_restart_mid_race_resumes_it(tmp_path):
    data = first_run(tmp_path)
    p = pipeline(tmp_path / "a", 32, 1024, window=10_000)  # (no verdict in this test)
    assert p.restore()
    run(p, data, FIRST + SECOND // 2)
    # what serving copies (and sends to its process) holds no hook of the race
    for model in (p.learner.model, p.reshape.race.challenger.model):
        pickle.dumps(Slots.like(model).modules[0])
    doc = newest(tmp_path / "a")
    held = doc["reshape"]
    assert held["race"]["active"] and held["race"]["seen"] == 2 * (SECOND // 2)
    said = summarize(sorted((tmp_path / "a" / "clicks").glob("ckpt-*.pt"))[-1])
    assert said["racing"]["events_raced"] == 2 * (SECOND // 2)
    assert said["racing"]["settings"]["model"]["hidden"] == 32 and "racing" in render(said)
    assert int(held["rows"]["user"].sum()) > 0  # rows carried by id, remembered
    q = pipeline(tmp_path / "a", 32, 1024, window=10_000)
    assert q.restore()
    r = q.reshape
    assert r is not None and r.race.seen == held["race"]["seen"]
    for k, v in held["race"]["learner"]["model"].items():
        assert torch.equal(r.race.challenger.model.state_dict()[k], v), k
    assert torch.equal(r.rows.seen["user"], held["rows"]["user"])
    assert q.learner.model.mlp[0].out_features == 16 and q.learner.updates == p.learner.updates
    run(q, data, FIRST + SECOND)
    assert q.reshape.race.seen == 2 * SECOND
    assert ledger_ranges(newest(tmp_path / "a")) == {
        "events:0": [(0, FIRST + SECOND)], "events:1": [(0, FIRST + SECOND)]
    }  # fmt: skip


def test_serving_scores_each_served_model_with_its_own_featurizer(tmp_path):
    """/predict's scorer is built from the config (before the restore): while the race
    runs it serves the restored model with the checkpoint's featurizer (its old
    id_buckets), and the new model with the config's once it won."""
    from stream_trainer.serving.scorer import Scorer
    from stream_trainer.serving.snapshot import Publisher

    data = first_run(tmp_path)
    p = pipeline(tmp_path / "a", 32, 1024)
    scorer, publisher = Scorer(p.spec, Publisher(0.0)), Publisher(0.0)
    scorer.publisher = publisher
    docs = list(make_generator("clicks", seed=5, count=8))
    assert p.restore() and p.reshape is not None
    for phase in ("racing", "won"):
        publisher.publish(p.learner)
        want = p.learner.predict(p.featurizer.featurize([{**d, "label": 0} for d in docs]).inputs)
        got = scorer.score(docs)
        assert not got.errors, (phase, got.errors)
        np.testing.assert_allclose(got.scores, want, rtol=1e-5, atol=1e-6, err_msg=phase)
        run(p, data, FIRST + SECOND)
    assert p.reshape is None and p.featurizer.id_buckets == 1024  # (it won)


def test_carry_keeps_what_fits_and_widens_without_changing_the_output():
    from stream_trainer.models.clicks import ClickModel

    torch.manual_seed(0)
    old, new = ClickModel(64, 16, 4, dim=4, hidden=8), ClickModel(128, 16, 4, dim=4, hidden=16)
    for t in old.parameters():  # (a trained model: no zero layer)
        torch.nn.init.normal_(t, std=0.3)
    done = carry(old, new)
    assert "ctx.weight" in done["kept"] and "mlp.2.bias" in done["kept"]
    assert set(done["grown"]) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight"}
    assert set(done["by_id"]) == {"user.weight", "item.weight", "user_bias.weight",
                                  "item_bias.weight"}  # fmt: skip
    x = torch.randn(5, 12)
    assert torch.allclose(old.mlp(x), new.mlp(x), atol=1e-6)  # the widened MLP: the same
