"""Never worse than the trivial baselines: the heads' running baselines, the online
mixture of the model and the trivial experts, and ``evaluate``'s bar on generated streams
the trivial baselines are hard to beat on (issue 15)."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from stream_trainer.config import parse_settings
from stream_trainer.evaluation import compare as cmp
from stream_trainer.evaluation import offline, streams
from stream_trainer.evaluation.baselines import _constant_rate
from stream_trainer.learner import Learner
from stream_trainer.learner.mixture import MODEL_PRIOR, Mixture
from stream_trainer.metrics import Metrics
from stream_trainer.models.baseline import RateBaseline, discounted_prefix
from stream_trainer.models.clicks import ClickModel
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.ports import Record
from stream_trainer.producers import make_generator


# ---- the pieces -------------------------------------------------------------------------------
def test_discounted_prefix_is_the_recurrence_at_any_length():
    rng = np.random.default_rng(0)
    x = rng.random((5000, 3))
    for gamma in (1.0, 0.999, 0.5 ** (1 / 50)):  # the last one needs chunks
        before, end = discounted_prefix(x, np.ones(3), gamma)
        a = np.ones(3)
        for j in range(x.shape[0]):
            np.testing.assert_allclose(before[j], a, rtol=1e-9)
            a = gamma * a + x[j]
        np.testing.assert_allclose(end, a, rtol=1e-9)


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_mixture_weights_are_per_event_whatever_the_batches(task):
    """Each event is mixed with the weights the events before it left: one batch, or
    the same events one at a time, give the same predictions, losses and state."""
    rng = np.random.default_rng(1)
    n = 700
    if task == "binary":
        y = (rng.random(n) < 0.1).astype(float)
        informed = np.where(y > 0, 0.5, 0.05) * rng.uniform(0.8, 1.2, n)  # knows something
        preds = np.stack([informed, np.full(n, 0.1), np.full(n, 0.3)], 1)
    else:
        y = rng.normal(size=(n, 2))
        preds = y[:, None, :] + rng.normal(size=(n, 3, 2)) * np.array([0.5, 1.0, 2.0])[:, None]
    names = ("model", "a", "b")
    whole, parts = Mixture(task, names), Mixture(task, names)
    mixed, losses = whole.step(preds, y)
    pieces = [parts.step(preds[i : i + 1], y[i : i + 1]) for i in range(n)]
    np.testing.assert_allclose(mixed, np.concatenate([p[0] for p in pieces]), rtol=1e-9)
    np.testing.assert_allclose(losses, np.concatenate([p[1] for p in pieces]), rtol=1e-9)
    np.testing.assert_allclose(whole.weights(), parts.weights(), rtol=1e-9)
    # the first event is mixed with the prior; the weights follow the better expert
    assert whole.names[int(np.argmax(whole.weights()))] == "model"


def test_binary_mixture_regret_to_each_expert_is_bounded_by_its_prior():
    """The mixture is Bayes: its log loss is at most ln(1 / prior) above any expert's, on
    any sequence, however long (the losses are not forgotten)."""
    rng = np.random.default_rng(2)
    n = 20_000
    y = (rng.random(n) < 0.003).astype(float)
    preds = np.stack([rng.uniform(1e-4, 0.02, n), np.full(n, 0.003)], 1)
    m = Mixture("binary", ("model", "constant"))
    _, losses = m.step(preds, y)
    expert = -(y[:, None] * np.log(preds) + (1 - y[:, None]) * np.log1p(-preds)).sum(0)
    assert losses.sum() <= expert[1] + math.log(1 / (1 - MODEL_PRIOR)) + 1e-9
    assert losses.sum() <= expert[0] + math.log(1 / MODEL_PRIOR) + 1e-9


def test_a_model_as_good_as_the_baseline_loses_its_weight():
    """A model no better than the baseline (here: the same rate, blurred) costs the
    mixture less than its prior in total, however long the stream: its weight decays
    with its likelihood ratio and never returns to the prior (as it would if the losses
    were forgotten, at a cost per event that never shrinks)."""
    rng = np.random.default_rng(3)
    n = 200_000
    y = (rng.random(n) < 0.003).astype(float)
    blurred = 0.003 * np.exp(rng.normal(0.0, 0.1, n))  # ~0.5% worse than the rate
    preds = np.stack([blurred, np.full(n, 0.003)], 1)
    m = Mixture("binary", ("model", "constant"))
    _, losses = m.step(preds, y)
    expert = -(y[:, None] * np.log(preds) + (1 - y[:, None]) * np.log1p(-preds))
    excess = np.cumsum(losses - expert[:, 1])
    assert excess.max() <= math.log(1 / (1 - MODEL_PRIOR)) + 1e-9
    behind = expert[:, 0].sum() - expert[:, 1].sum()
    assert behind > 1.0  # nats: the model is measurably worse
    w = m.weights()
    assert w[0] / w[1] == pytest.approx(MODEL_PRIOR / (1 - MODEL_PRIOR) * math.exp(-behind))


def test_the_rate_baseline_sees_only_earlier_events_of_a_batch():
    b = RateBaseline()
    y = np.array([1.0, 0.0, 0.0, 1.0])
    offsets, experts = b.predict({"x": np.zeros(4)}, y, 4)
    clicks_before = np.array([0, 1, 1, 1])
    laplace = (clicks_before + 1) / (np.arange(4) + 2)
    np.testing.assert_array_equal(experts[:, 0], laplace)  # constant_rate: every event
    np.testing.assert_allclose(experts[:, 1], laplace, rtol=1e-4)  # recent_rate: forgetting
    np.testing.assert_allclose(offsets, np.log(experts[:, 1] / (1 - experts[:, 1])))
    assert b.counts.tolist() == [0.0, 0.0]  # nothing kept before commit (the step may fail)
    assert b.totals.tolist() == [0.0, 0.0]
    b.commit()
    assert b.counts[1] == pytest.approx(2.0, rel=1e-4)
    assert b.totals.tolist() == [4.0, 2.0]


@pytest.mark.parametrize("size", [1, 256, 1024])
def test_the_constant_rate_expert_is_the_baseline_evaluate_runs(size):
    """Ours can only fall back on the trivial baseline it is compared with if that
    baseline is one of its experts: the same numbers, at any batch size."""
    y = (np.random.default_rng(4).random(3000) < 0.003).astype(float)
    step = _constant_rate()
    theirs = np.array([step({"label": v}) for v in y])
    b, ours = RateBaseline(), []
    for i in range(0, len(y), size):
        part = y[i : i + size]
        ours.append(b.predict({"x": np.zeros(len(part))}, part, len(part))[1])
        b.commit()
    np.testing.assert_array_equal(np.concatenate(ours)[:, 0], theirs)


# ---- the learner ------------------------------------------------------------------------------
def click_learner() -> Learner:
    torch.manual_seed(0)
    return Learner(ClickModel(64, 16, 2, dim=4, hidden=8, pair_buckets=32), "binary")


def click_batch(n: int, rate: float, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    x = {
        "user": rng.integers(1, 64, n),
        "item": rng.integers(1, 64, n),
        "ctx": rng.integers(1, 16, (n, 2)),
        "ctx_w": np.ones((n, 2), np.float32),
        "pair": rng.integers(1, 32, n),
    }
    return x, (rng.random(n) < rate).astype(np.float32)


def test_a_fresh_head_predicts_the_running_baseline():
    learner = click_learner()
    x, y = click_batch(2000, 0.01)
    learner.baseline.predict(x, y, len(y))
    learner.baseline.commit()  # the base rate of 2,000 events, learned by the baseline alone
    rate = float(learner.baseline.rate(learner.baseline.counts))
    own = learner.predict(x, mixed=False)
    np.testing.assert_allclose(own, rate, rtol=0.02)  # the learned part starts at ~0
    np.testing.assert_allclose(learner.predict(x), rate, rtol=0.02)


def test_a_fresh_model_is_not_held_back_by_the_loss_of_the_one_it_replaces():
    """Losses are never forgotten, so a model that ran up a deficit would keep it: a
    reset (or a challenger) starts level with the best trivial expert instead, and a
    good fresh model wins its weight back as fast as a model on a fresh stream does."""
    rng = np.random.default_rng(5)
    y = (rng.random(50_000) < 0.01).astype(float)
    bad = np.stack([np.full(50_000, 0.2), np.full(50_000, 0.01)], 1)  # the model: wrong
    m = Mixture("binary", ("model", "constant"))
    m.step(bad, y)
    assert m.weights()[0] < 1e-100  # hundreds of nats behind
    m.reset_model()
    fresh = Mixture("binary", ("model", "constant"))
    assert m.weights()[0] == pytest.approx(fresh.weights()[0])


def test_reset_model_and_a_challenger_keep_the_running_baseline(tmp_path):
    learner = click_learner()
    for seed in range(4):
        learner.step(*click_batch(256, 0.02, seed))
    counts, totals = learner.baseline.counts.copy(), learner.baseline.totals.copy()
    mix = learner.mixture.losses.copy()
    child = learner.spawn()
    np.testing.assert_array_equal(child.baseline.counts, counts)
    np.testing.assert_array_equal(child.baseline.totals, totals)
    # the trivial experts' record is inherited; the fresh model starts level with the best
    np.testing.assert_array_equal(child.mixture.losses[1:], mix[1:])
    assert child.mixture.losses[0] == mix[1:].min()
    learner.reset_model()
    np.testing.assert_array_equal(learner.baseline.counts, counts)
    np.testing.assert_array_equal(learner.baseline.totals, totals)
    np.testing.assert_array_equal(learner.mixture.losses[1:], mix[1:])
    assert learner.mixture.losses[0] == mix[1:].min()
    # checkpointed with the model: a restored learner continues identically
    torch.save(learner.state_dict(), tmp_path / "l.pt")
    restored = click_learner()
    restored.load_state_dict(torch.load(tmp_path / "l.pt", weights_only=True))
    x, y = click_batch(256, 0.02, 9)
    a, b = learner.step(x, y), restored.step(x, y)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    np.testing.assert_array_equal(a.model_losses, b.model_losses)
    assert set(a.weights) == {"model", "constant_rate", "recent_rate"}
    assert math.isclose(sum(a.weights.values()), 1.0)


def test_the_baseline_is_the_same_at_any_batch_size():
    x, y = click_batch(2048, 0.01, 3)
    ends = []
    for size in (256, 1024, 2048):
        learner = click_learner()
        for i in range(0, 2048, size):
            learner.step({k: v[i : i + size] for k, v in x.items()}, y[i : i + size])
        ends.append(np.concatenate([learner.baseline.counts, learner.baseline.totals]))
    np.testing.assert_allclose(ends[0], ends[1], rtol=1e-12)
    np.testing.assert_allclose(ends[0], ends[2], rtol=1e-12)


def test_the_mixture_weights_reach_their_gauges_as_the_pipeline_trains(tmp_path):
    """After each update the pipeline sets one gauge per expert to the mixture's weights:
    a dashboard shows what the next event is scored with, and sees the model win weight."""
    reg = CollectorRegistry()
    s = parse_settings(
        {
            "checkpoint": {"dir": str(tmp_path), "every_seconds": 1e9},
            "device": "cpu",
            "pipelines": [
                {
                    "name": "p",
                    "kind": "clicks",
                    "topics": ["t"],
                    "featurizer": {"id_buckets": 4096, "pair_buckets": 4096},
                    "model": {"dim": 8, "hidden": 16},
                }
            ],
        }
    )
    p = Pipeline(s, s.pipelines[0], hooks=Metrics(reg).pipeline("p"))
    events = make_generator("clicks", seed=0, count=3000)
    recs = [Record("t", 0, i, 0, None, json.dumps(e).encode()) for i, e in enumerate(events)]
    model = []
    for i in range(0, len(recs), 1000):
        p.handle(recs[i : i + 1000])
        p.flush()
        mixture = p.learner.mixture
        want = dict(zip(mixture.names, mixture.weights().tolist(), strict=True))
        got = {
            e: reg.get_sample_value("stream_trainer_mixture_weight", {"pipeline": "p", "expert": e})
            for e in want
        }
        assert got == pytest.approx(want, rel=1e-12) and set(want) >= {"model", "constant_rate"}
        model.append(got["model"])
    assert MODEL_PRIOR < model[0] < model[-1]  # measured: 0.49, then 0.99997, then ~1


# ---- evaluate: the bar, from event 1,000 on ----------------------------------------------------
def _compare(stream: streams.Stream, batch: int) -> dict:
    def settings(kind, s, config=None):
        doc = offline.pipeline_settings(kind, s, config).model_dump(mode="json")
        doc["pipelines"][0]["batch"]["max_size"] = batch
        return parse_settings(doc, "evaluate")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmp, "pipeline_settings", settings)
        return cmp.compare(stream, vw=False, trees=False)


BAR_CASES = [
    ("rare-clicks", 10_000, 256),
    ("rare-clicks", 10_000, 1024),
    ("random-walk", 10_000, 256),
    ("random-walk", 10_000, 1024),
    ("level-shifts", 10_000, 256),
    ("clicks", 10_000, 256),
    ("ticks", 10_000, 256),
    ("sensors", 10_000, 256),
]


@pytest.mark.parametrize(("name", "events", "batch"), BAR_CASES)
def test_ours_is_never_worse_than_the_best_trivial_baseline(name, events, batch):
    """Printed at three decimals, as ``evaluate`` reports it: ours / the best trivial
    baseline <= 1.000 from event 1,000 on."""
    if name in streams.SCENARIOS:
        stream = streams.generated(streams.SCENARIOS[name][0], events, scenario=name)
    else:
        stream = streams.generated(name, events, drift_at=events // 2)
    bar = _compare(stream, batch)["bar"]
    print(name, batch, bar)
    assert round(bar["vs_trivial"], 3) <= 1.0, bar


@pytest.mark.parametrize("seed", [2, 4])
def test_where_the_model_cannot_win_ours_pays_at_most_the_prior(seed):
    """On rare clicks the model does not beat the constant rate (on these seeds ours was
    1.0001-1.0002 x it while the mixture forgot its losses). Ours, as ``evaluate``
    measures it (float32 predictions, every event scored), is at most ln(1 / prior) nats
    above the constant rate in total (Bayes' bound: the constant rate ``evaluate`` runs
    is an expert, with all of the prior but the model's and the recent rate's; 0.002
    nats, about a tenth of one event's loss here), and so from event 1,000 on, where the
    constant rate still has about its prior."""
    stream = streams.generated("clicks", 10_000, seed=seed, scenario="rare-clicks")
    rows = {r["name"]: r for r in _compare(stream, 256)["results"]}
    ours, rate = rows["ours (clicks model, batch 256)"], rows["constant rate (running mean)"]
    bound = math.log(1 / (1 - 2 * MODEL_PRIOR))
    assert bound < 0.2 * rate["log_loss"]
    slack = 1e-4  # float32's rounding of the mixed probabilities
    assert (ours["log_loss"] - rate["log_loss"]) * 10_000 <= bound + slack
    assert (ours["log_loss_from_1000"] - rate["log_loss_from_1000"]) * 9_000 <= bound + slack


def test_scenarios_have_their_properties_and_leave_the_default_streams_alone():
    rate = np.mean([e["label"] for e in make_generator("clicks", seed=0, count=200_000, base=-7.0)])
    assert 0.0025 < rate < 0.004  # ~0.3%
    # the scenario knobs at their defaults draw exactly what the streams always drew
    for kind, knob in (("clicks", {"base": -1.2}), ("ticks", {"signal": 1.0}),
                       ("sensors", {"level_shift_rate": 0.0})):  # fmt: skip
        a = list(make_generator(kind, seed=3, count=500, drift_at=200))
        b = list(make_generator(kind, seed=3, count=500, drift_at=200, **knob))
        assert a == b
    walk = list(make_generator("ticks", seed=0, count=4000, signal=0.0))
    prices = {}
    for e in walk:
        prices.setdefault(e["symbol"], []).append(e["price"])
    r = np.diff(np.log(prices["SYM0"]))
    assert abs(np.corrcoef(r[:-1], r[1:])[0, 1]) < 0.1  # nothing to forecast
    shifted = list(make_generator("sensors", seed=0, count=4000, level_shift_rate=0.001))
    plain = list(make_generator("sensors", seed=0, count=4000))
    assert shifted != plain and copy.deepcopy(shifted[0]) == plain[0]


def test_the_cli_offers_exactly_the_scenarios():
    from stream_trainer.cli.parsers import build_parser

    ev = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["evaluate"]._actions
        if a.dest == "scenario"
    )  # fmt: skip
    assert set(ev.choices) == set(streams.SCENARIOS)
