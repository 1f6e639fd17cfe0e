"""Ingest workers (edges/ingest.py) against the real broker: every event applied once,
bad ones dead-lettered with their reasons, and a worker that dies is replaced without
losing or repeating anything."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from support import Daemon, base_config, consume_all, newest_checkpoint, produce
from test_faults import assert_exactly_once, clicks_pipeline, partition_sizes

from stream_trainer.edges.admin import create_topics
from stream_trainer.metrics.scrape import sample
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration


def consumed(m: dict) -> float:
    return sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") or 0


def worker_pids(d: Daemon) -> list[int]:
    found = re.findall(r"ingest workers started.*?pids=([\d,]+)", d.log())
    return [int(p) for p in found[-1].split(",")] if found else []


def test_two_workers_apply_every_event_once_and_dead_letter_the_bad(
    broker, topic, workdir, metrics_port
):
    bs = broker.bootstrap
    create_topics(bs, {topic: 4})
    events = list(make_generator("clicks", seed=31, count=6000))
    bad = [b"{oops", b'{"ts": NaN, "user_id": "u", "item_id": "i", "label": 1}', b""]
    values = [json.dumps(e).encode() for e in events]
    values[100:100] = bad  # malformed ones among the good
    values += values[200:210]  # and ten exact duplicates at the end (one partition)
    total = produce(bs, topic, values)
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)], ingest={"workers": 2})
    d = Daemon(cfg, workdir, metrics_port).start()
    try:
        d.wait_for(lambda m: consumed(m) >= total, what="every event consumed")
        assert len(worker_pids(d)) == 2
        assert "featurize=yes" in d.log()  # the workers make the examples
    finally:
        assert d.terminate() == 0
    state = newest_checkpoint(workdir / "ckpt", "clicks")
    assert_exactly_once(state, topic, partition_sizes(bs, topic, total))
    assert state["counters"]["rejected"] == len(bad) + 10
    dead = consume_all(bs, f"{topic}.dlq", len(bad) + 10)
    reasons = sorted(dict(r.headers)["reason"].decode() for r in dead)
    assert reasons == sorted(["not_json", "non_finite", "empty"] + ["duplicate"] * 10)


def test_a_killed_worker_is_replaced_and_nothing_is_lost_or_repeated(
    broker, topic, workdir, metrics_port
):
    bs = broker.bootstrap
    create_topics(bs, {topic: 2})
    events = list(make_generator("clicks", seed=32, count=30_000))
    half = len(events) // 2
    produce(bs, topic, events[:half], "user_id")
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)], ingest={"workers": 1})
    d = Daemon(cfg, workdir, metrics_port).start()
    try:
        d.wait_for(lambda m: consumed(m) > 0, what="ingest under way")
        (pid,) = worker_pids(d)
        os.kill(pid, signal.SIGKILL)
        produce(bs, topic, events[half:], "user_id")
        d.wait_for(lambda m: consumed(m) >= len(events), what="every event consumed")
        time.sleep(0.5)
    finally:
        assert d.terminate() == 0
    assert "ingest worker died" in d.log()
    assert_exactly_once(
        newest_checkpoint(workdir / "ckpt", "clicks"),
        topic,
        partition_sizes(bs, topic, len(events)),
    )
