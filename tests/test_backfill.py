"""Backfill from a point in time: ``source.start_from`` / ``run --from``, resolved against
a real broker; a checkpoint's offsets win unless ``--ignore-checkpoint-offsets``."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest
import torch
from kafka import KafkaProducer
from support import Daemon, base_config, produce

from stream_trainer.cli import build_parser
from stream_trainer.cli.commands import run_overrides
from stream_trainer.config import load_settings, parse_settings, start_position
from stream_trainer.edges.admin import create_topics
from stream_trainer.edges.start import CatchUp, resolve
from stream_trainer.errors import ConfigError
from stream_trainer.metrics.scrape import sample
from stream_trainer.pipeline.ledger import OffsetLedger
from stream_trainer.producers import generators

PIPELINE = [{"name": "clicks", "kind": "clicks", "topics": ["PLACEHOLDER"]}]


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def produce_at(bootstrap: str, topic: str, events: list[dict], stamps: list[int]):
    """Publish ``events`` with these Kafka timestamps; [(partition, offset)] of each."""
    import json

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    futures = [
        producer.send(topic, json.dumps(e).encode(), key=e["user_id"].encode(), timestamp_ms=ts)
        for e, ts in zip(events, stamps, strict=True)
    ]
    producer.flush()
    out = [(m.partition, m.offset) for m in (f.get(timeout=30) for f in futures)]
    producer.close()
    return out


# ---- pure / fast -----------------------------------------------------------------------
def test_start_from_parses_keywords_and_times_and_says_what_it_accepts():
    assert start_position("EARLIEST") == "earliest"
    assert start_position("2026-11-01T00:00Z") == 1_793_491_200_000
    assert start_position("2026-11-01T01:00+01:00") == 1_793_491_200_000
    doc = {"pipelines": [{"name": "c", "kind": "clicks", "topics": ["c"]}]}
    assert parse_settings(doc).source.start_from == "committed"
    with pytest.raises(ConfigError, match=r"source.start_from: .*committed, earliest, latest"):
        parse_settings({**doc, "source": {"start_from": "yesterday"}})


def test_the_from_flag_overrides_the_config_key(tmp_path, monkeypatch):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        "source: {start_from: earliest}\npipelines: [{name: c, kind: clicks, topics: [c]}]\n"
    )
    a = build_parser().parse_args(["run", "--config", str(cfg)])
    assert load_settings(cfg, overrides=run_overrides(a)).source.start_from == "earliest"
    a = build_parser().parse_args(["run", "--config", str(cfg), "--from", "2026-11-01T00:00Z"])
    s = load_settings(cfg, overrides=run_overrides(a))
    assert s.source.position == 1_793_491_200_000 and not a.ignore_checkpoint_offsets


def test_catch_up_logs_progress_every_n_seconds_then_once_caught_up(caplog):
    caplog.set_level(logging.INFO, logger="stream_trainer.edges.start")
    c = CatchUp("clicks", every_s=10.0, caught_up_lag=100)
    hw = 10_000
    for t in range(0, 31):  # 300 events/s read, the log grows by 50/s
        pos = 300 * t
        hw += 50
        c.observe({("t", 0): (min(pos, hw), hw)}, float(t))
    lines = [r for r in caplog.records if r.name == "stream_trainer.edges.start"]
    assert [r.getMessage().split(" [")[0] for r in lines] == ["catching up"] * 4
    r = lines[1]  # after 10 s: 3000 read, 10,500 - 3000 behind, gaining 250/s
    assert (r.behind, r.events_per_s, r.eta) == (7550, 300, "30s")
    assert r.getMessage() == "catching up [######--------------] 28%"
    c.observe({("t", 0): (11_600, 11_600)}, 41.0)
    assert caplog.records[-1].getMessage() == "caught up; training live"
    c.observe({("t", 0): (11_600, 99_999)}, 50.0)  # done: quiet from now on
    assert caplog.records[-1].getMessage() == "caught up; training live"


def test_catch_up_waits_for_every_partitions_watermark(caplog):
    """A fetch may answer one partition for a while: no "caught up" on half a view."""
    caplog.set_level(logging.INFO, logger="stream_trainer.edges.start")
    c = CatchUp("clicks", every_s=1.0, caught_up_lag=100)
    c.observe({("t", 0): (50, 100)}, 0.0, expected=2)  # partition 1 not known yet
    assert not c.done and not caplog.records
    c.observe({("t", 0): (90, 100), ("t", 1): (0, 60_000)}, 1.0, expected=2)
    assert caplog.records[-1].getMessage() == "catching up" and caplog.records[-1].behind == 60_010
    c.observe({("t", 0): (100, 100)}, 2.0, expected=2)  # partition 1 still far behind
    assert not c.done


def test_catch_up_is_quiet_when_live_from_the_start(caplog):
    caplog.set_level(logging.INFO, logger="stream_trainer.edges.start")
    c = CatchUp("clicks", every_s=1.0, caught_up_lag=1000)
    for t in range(5):
        c.observe({("t", 0): (100 * t, 100 * t + 500)}, float(t))
    assert not [r for r in caplog.records if r.name == "stream_trainer.edges.start"]


# ---- against the broker ----------------------------------------------------------------
@pytest.mark.integration
def test_resolve_finds_the_first_offset_at_or_after_a_time_and_the_end(broker, topic):
    create_topics(broker.bootstrap, {topic: 1})
    t0 = int(time.time() * 1000) - 3_600_000
    placed = produce_at(
        broker.bootstrap, topic, list(generators.make_generator("clicks", seed=1, count=30)),
        [t0 + 1000 * i for i in range(30)],
    )  # fmt: skip
    assert [o for _, o in placed] == list(range(30))
    from stream_trainer.config import KafkaSettings

    k = KafkaSettings(bootstrap_servers=broker.bootstrap)
    tp = (topic, 0)
    assert resolve(k, [tp], t0 + 12_000) == {tp: 12}  # exactly at a record
    assert resolve(k, [tp], t0 + 12_001) == {tp: 13}  # between two
    assert resolve(k, [tp], t0 - 1) == {tp: 0}
    assert resolve(k, [tp], t0 + 999_999) == {tp: 30}  # after every record: the end
    assert resolve(k, [], "latest", topics=[topic]) == {tp: 30}


@pytest.mark.integration
def test_start_from_a_time_trains_only_the_events_after_it(broker, topic, workdir, metrics_port):
    """Events on either side of T (Kafka timestamps): a fresh model started from T trains
    exactly those at or after it; restarted, its checkpoint wins over T; with
    --ignore-checkpoint-offsets and --from earliest it reads the whole log again."""
    create_topics(broker.bootstrap, {topic: 2})
    t = int(time.time() * 1000) - 3_600_000
    events = list(generators.make_generator("clicks", seed=3, count=400))
    stamps = [t - 240 + i for i in range(240)] + [t + 1000 * i for i in range(160)]
    placed = produce_at(broker.bootstrap, topic, events, stamps)  # the last before: t - 1
    after: dict[int, list[int]] = {}
    for (part, off), ts in zip(placed, stamps, strict=True):
        if ts >= t:
            after.setdefault(part, []).append(off)
    assert len(after) == 2  # both partitions hold events on both sides of t
    ckpts = workdir / "ckpt"
    config = base_config(
        broker.bootstrap, ckpts, [{**PIPELINE[0], "topics": [topic]}],
        source={"start_from": iso(t), "progress_every_seconds": 1.0, "caught_up_lag": 10},
    )  # fmt: skip
    config["checkpoint"]["every_seconds"] = 1.0

    def metric(m: dict, name: str) -> float:
        return sample(m, name, pipeline="clicks") or 0.0

    def run(expect_consumed: int, env: dict | None = None) -> str:
        d = Daemon(config, workdir, metrics_port, env=env).start()
        try:
            d.wait_for(
                lambda m: metric(m, "stream_trainer_events_consumed_total") >= expect_consumed,
                what=f"{expect_consumed} consumed",
            )
            time.sleep(3.0)  # nothing more comes
            m = d.metrics()
            assert metric(m, "stream_trainer_events_consumed_total") == expect_consumed
            assert metric(m, "stream_trainer_events_rejected_total") == 0
            assert d.terminate() == 0
        finally:
            d.kill()
        return d.log()

    log = run(160)
    assert "start position" in log and "scanning record timestamps" in log  # Tansu 0.6.0
    doc = torch.load(sorted((ckpts / "clicks").glob("ckpt-*.pt"))[-1], weights_only=True)
    ledger = OffsetLedger()
    ledger.load_state_dict(doc["ledger"])
    for part, offs in after.items():  # exactly the events at or after t, each once
        assert ledger.ranges((topic, part)) == [(offs[0], offs[-1] + 1)], part
        assert offs == list(range(offs[0], offs[-1] + 1))
    assert ledger.duplicates == 0 and doc["counters"]["trained"] == 160

    produce(broker.bootstrap, topic, generators.make_generator("clicks", seed=4, count=50))
    log = run(50)  # restarted: the checkpoint's offsets win over start_from
    assert "its offsets win over source.start_from" in log
    log = run(450, env={"STREAM_TRAINER_FROM": "earliest",
                        "STREAM_TRAINER_IGNORE_CHECKPOINT_OFFSETS": "1"})  # fmt: skip
    assert "ignoring the checkpoint's offsets (--ignore-checkpoint-offsets)" in log
