"""`evaluate --study delayed-labels`: the same clicks learned with labels inline and
through the joiner, beside River's progressive_val_score with the same delays."""

from __future__ import annotations

import json
import math

import numpy as np

from stream_trainer.cli import main
from stream_trainer.evaluation import delayed
from stream_trainer.evaluation.streams import generated
from stream_trainer.producers import make_generator


def test_the_study_scores_every_method_on_the_events_resolved_either_way(capsys):
    stream = generated("clicks", 6000, seed=2)  # 300 s of event time
    report = delayed.study(stream, seed=2, window_s=60.0, max_delay_s=30.0)
    ts = np.array([e["ts"] for e in stream.events])
    j = report["joiner"]
    assert j["labelled"] + j["negative"] + j["pending"] == 6000 and j["late"] == 0
    # scored: every event before the last window's first unclicked one, whatever its label
    assert 6000 - 60 * 20 - 50 < report["scored"] < 6000 - 60 * 20 + 50
    assert report["scored"] == int(np.sum(ts < ts[report["scored"]]))
    rows = {(r["name"].split(" (")[0], r["labels"]): r for r in report["rows"]}
    assert set(rows) == {("ours", delayed.INLINE), ("ours", delayed.JOINER),
                         ("River LogisticRegression", delayed.INLINE),
                         ("River LogisticRegression", delayed.AS_THEY_COME),
                         ("River LogisticRegression", delayed.AT_WINDOW_END)}  # fmt: skip
    rates = {r["observed_rate"] for r in report["rows"]}
    assert len(rates) == 1  # the same events, the same labels
    (rate,) = rates
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))  # in hindsight
    ratios = {(r["name"].split(" (")[0], r["labels"]): r for r in report["ratios"]}
    assert set(ratios) == set(rows) - {("ours", "inline"), ("River LogisticRegression", "inline")}
    # with labels inline both learners beat the best constant rate on these events
    # (measured 0.597 and 0.602 vs 0.609); every way of waiting for labels costs (each
    # row's log loss over its learner's inline one: 1.06, 1.24, 1.04), most of all
    # River's learning clicks as they come, before the non-clicks (predictions pulled up)
    for learner in ("ours", "River LogisticRegression"):
        assert rows[(learner, delayed.INLINE)]["log_loss"] < constant
    for key, r in ratios.items():
        assert r["log_loss"] > 1.0, key
    river = "River LogisticRegression"
    come, end = rows[(river, delayed.AS_THEY_COME)], rows[(river, delayed.AT_WINDOW_END)]
    assert come["log_loss"] > end["log_loss"] and come["mean_predicted"] > rate + 0.1
    got = ratios[("ours", delayed.JOINER)]["log_loss"]
    want = rows[("ours", delayed.JOINER)]["log_loss"] / rows[("ours", delayed.INLINE)]["log_loss"]
    assert got == want
    text = delayed.markdown(report)
    assert "delayed (our joiner)" in text and "Delayed / inline" in text


def test_the_cli_explains_a_stream_shorter_than_the_window(tmp_path, capsys):
    path = tmp_path / "clicks.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_generator("clicks", count=1500)))
    args = ["evaluate", "--study", "delayed-labels", "--input", str(path), "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "75 s of event time" in err and "900 s" in err  # nothing known of its non-clicks


def test_delayed_labels_cost_little_more_than_the_window_they_wait():
    """Every example waits its window (a click as long as a non-click): trained as they
    came, clicks taught the model that whatever was new clicked (1.46x on 20k events)."""
    stream = generated("clicks", 12_000, seed=3)  # 600 s of event time: 10 windows
    report = delayed.study(stream, seed=3, window_s=60.0, max_delay_s=30.0, river=False)
    (ratio,) = report["ratios"]
    assert ratio["labels"] == delayed.JOINER
    assert ratio["log_loss"] < 1.06  # measured 1.033
    inline, joined = report["rows"]
    assert abs(joined["mean_predicted"] - joined["observed_rate"]) < 0.03  # not pulled to 1
