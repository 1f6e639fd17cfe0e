"""`stream-trainer evaluate`: our pipeline and the baselines on the same events."""

from __future__ import annotations

import json
import math

import pytest

from stream_trainer.cli import main
from stream_trainer.evaluation import reporting, studies
from stream_trainer.evaluation.compare import compare
from stream_trainer.evaluation.streams import Stream, from_file, generated, recurring_clicks
from stream_trainer.producers import make_generator


def results(report: dict) -> dict[str, dict]:
    return {r["name"].split(" (")[0]: r for r in report["results"]}


def test_clicks_ours_beats_the_constant_rate_and_every_method_scores_the_same_events():
    stream = generated("clicks", 6000, seed=3, drift_at=3000)
    report = compare(stream, vw=False)
    r = results(report)
    assert report["scored"] == 6000 and report["rejected"] == 0
    assert {"ours", "constant rate", "River LogisticRegression",
            "River HoeffdingAdaptiveTreeClassifier"} <= set(r)  # fmt: skip
    assert r["ours"]["log_loss"] < r["constant rate"]["log_loss"]
    for row in r.values():
        assert 0.0 < row["log_loss"] < 50 and 0.3 < row["auc"] <= 1.0
        assert row["events_per_s"] > 0
    assert r["ours"]["log_loss"] < r["River LogisticRegression"]["log_loss"] < 0.69
    # the constant rate is calibrated by construction
    assert abs(r["constant rate"]["calibration_gap"]) < 0.02


@pytest.mark.parametrize(
    ("kind", "events", "trees"), [("ticks", 3000, True), ("sensors", 6000, False)]
)
def test_series_baselines_are_scored_in_raw_units_on_our_examples(kind, events, trees):
    stream = generated(kind, events, seed=1)
    report = compare(stream, trees=trees)
    r = results(report)
    assert 0 < report["scored"] < events  # each key's first readings only seed state
    assert r["ours"]["mse"] < r["River LinearRegression"]["mse"]
    assert ("River HoeffdingAdaptiveTreeRegressor" in r) == trees
    if kind == "ticks":
        assert r["ours"]["mse"] < r["zero return"]["mse"] < r["last return"]["mse"]
        assert 0.5 < r["ours"]["directional_accuracy"] <= 1.0
    else:
        assert r["last value"]["mse"] > 0 and 0.0 <= r["ours"]["anomaly_rate"] < 0.2


def test_bad_lines_in_a_file_are_rejected_not_fatal(tmp_path):
    path = tmp_path / "clicks.jsonl"
    good = [json.dumps(e) for e in make_generator("clicks", seed=0, count=600)]
    path.write_text("\n".join([*good[:300], "not json", '{"user_id": 1}', *good[300:]]))
    report = compare(from_file("clicks", path), vw=False)
    assert report["events"] == 602 and report["rejected"] == 2 and report["scored"] == 600


def test_cli_prints_a_markdown_table_and_json(tmp_path, capsys):
    assert main(["evaluate", "--kind", "ticks", "--events", "2000", "--no-trees"]) == 0
    out = capsys.readouterr().out
    assert "| method |" in out and "| ours" in out and "River LinearRegression" in out
    assert main(["evaluate", "--kind", "clicks", "--events", "1500", "--json", "--no-vw"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "clicks" and doc["results"][0]["name"].startswith("ours")
    assert not math.isnan(doc["results"][0]["log_loss"])


def test_cli_explains_a_missing_input(capsys):
    assert main(["evaluate", "--kind", "clicks", "--input", "/nonexistent.jsonl"]) != 0
    assert "cannot read /nonexistent.jsonl" in capsys.readouterr().err


def sharp_clicks(tmp_path, count: int, changes: list[int], **generator) -> Stream:
    """Clicks a model learns within a few thousand events (100 users, 50 items, 32 latent
    dimensions: the users' tastes carry most of the signal), so that a study of a few
    ten thousand events sees a learned concept change. On the default stream (2,000
    users, 500 items) a drift at 8,000 of 16,000 was never detected (every policy's row
    the same); the studies of docs/results/studies.md run 200k-300k events."""
    path = tmp_path / "sharp-clicks.jsonl"
    evs = make_generator("clicks", count=count, n_users=100, n_items=50, dim=32, **generator)
    path.write_text("\n".join(json.dumps(e) for e in evs))
    stream = from_file("clicks", path)
    stream.drift_at = changes
    return stream


def test_adaptation_runs_every_policy_on_the_same_drifting_stream(tmp_path):
    """Every policy on one stream whose items' tastes and popularity change at 20,000,
    after the model learned them: the same model and losses until the drift, one
    detection after it, and then every policy recovers sooner, with a lower loss, than
    the model left alone with what it learned of the old concept (its optimizer's
    per-row step sizes have shrunk over 20,000 events)."""
    stream = sharp_clicks(tmp_path, 30_000, [20_000], seed=0, drift_at=20_000)
    report = studies.adaptation(stream)
    rows = {r["policy"]: r for r in report["rows"]}
    assert list(rows) == list(studies.ADAPTATIONS)
    none = rows["none"]
    for r in rows.values():  # no policy acted before the drift; each one once after it
        assert r["pre_drift_loss"] == none["pre_drift_loss"] and r["drift_detections"] == 1
    assert none["promotions"] == 0 and rows["challenger"]["promotions"] == 1
    for name in list(rows)[1:]:  # measured: 0.963 x, 0.964 x, 0.969 x none's loss
        assert rows[name]["loss_after_drift"] < 0.98 * none["loss_after_drift"], name
        assert rows[name]["events_to_recover"] < none["events_to_recover"], name  # < 8,497
    text = reporting.adaptation_markdown(report)
    assert "| challenger |" in text and "events to recover" in text


def test_adaptation_needs_a_known_drift(tmp_path, capsys):
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_generator("clicks", count=50)))
    assert (
        main(["evaluate", "--kind", "clicks", "--input", str(path), "--study", "adaptation"]) != 0
    )
    assert "needs a stream with --drift-at" in capsys.readouterr().err


def test_replay_study_compares_with_and_without_a_buffer(tmp_path, capsys):
    """A -> B -> A, 8,000 events each (the second A cut to its first 2,000): a model that
    replays a reservoir of past examples still knows some of A when A returns, so its
    loss there is lower than without a buffer (it pays on B, where the reservoir's A rows
    contradict B's: 0.667 vs 0.650). No drift policy acts in either arm: with the
    default challenger, the replaying champion, slower on B, was replaced by a fresh
    challenger and the replay arm lost more on A's return (0.634 vs 0.600)."""
    stream = sharp_clicks(
        tmp_path, 18_000, [8_000, 16_000], seed=0, drift_every=8_000, recurring=True
    )
    config = tmp_path / "replay.yaml"
    config.write_text("pipelines: [{name: c, kind: clicks, topics: [c], drift: {actions: []}}]\n")
    report = studies.replay_study(stream, capacities=(0, 2000), config=str(config))
    off, on = report["rows"]
    assert off["replay"] == "off" and on["replay"].startswith("2,000 examples")
    # measured: 0.5835 with replay, 0.6001 without (on the first A: 0.5744 and 0.5755)
    assert on["loss_return_window"] < 0.98 * off["loss_return_window"]
    assert "| off |" in reporting.replay_markdown(report)
    assert recurring_clicks(300).drift_at == [100, 200]  # the CLI's stream: A, B, A by thirds
    assert main(["evaluate", "--kind", "ticks", "--study", "replay"]) != 0
    assert "--study replay uses its own click stream" in capsys.readouterr().err


def test_the_study_is_one_choice_and_the_comparison_is_the_default(monkeypatch, capsys):
    from stream_trainer.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["evaluate", "--kind", "clicks"]).study == "compare"
    args = parser.parse_args(["evaluate", "--study", "drift-suite", "--events", "10"])
    assert args.study == "drift-suite" and args.kind is None
    for old in ("--adaptation", "--replay-study", "--drift-suite"):  # the flags it replaced
        with pytest.raises(SystemExit):
            parser.parse_args(["evaluate", "--kind", "clicks", old])
    capsys.readouterr()
    monkeypatch.setenv("STREAM_TRAINER_EVALUATE_STUDY", "nope")
    assert main(["evaluate", "--kind", "clicks", "--events", "10"]) == 2
    err = capsys.readouterr().err
    assert (
        "--study must be one of compare, adaptation, replay, drift-suite, delayed-labels, "
        "not 'nope'"
    ) in err


def test_every_kind_the_cli_offers_has_evaluation_traits():
    from stream_trainer.cli.flags import KINDS
    from stream_trainer.evaluation.kinds import EVAL_KINDS

    assert set(EVAL_KINDS) == set(KINDS)
    for kind, t in EVAL_KINDS.items():
        if kind == "tabular":  # the task is the pipeline's own; River's models on its fields
            assert (t.task, t.baselines) == ("config", "tabular")
            continue
        assert t.task in ("binary", "regression") and t.baselines in ("clicks", "series"), kind
        if t.baselines == "series":  # a series kind keys its series and has trivial baselines
            assert t.key_field and t.feature_key and t.trivial, kind
