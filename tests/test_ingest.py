"""Ingest workers (edges/ingest.py) against the real broker: every event applied once,
bad ones dead-lettered with their reasons, and a worker that dies is replaced without
losing or repeating anything."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

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


class _Group:
    """The consumer-group member an IngestSource sits on: here, one that holds nothing."""

    rebalancing = False
    assignment: list = []
    fetcher = None

    def poll(self, timeout_s: float) -> list:
        return []


def _signals(pid: int) -> dict[str, int]:
    """SigBlk and SigIgn of a process, as bit masks (bit n-1: signal n)."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in status if ":\t" in line)
    return {k: int(fields[k], 16) for k in ("SigBlk", "SigIgn")}


def test_workers_leave_a_stop_to_the_trainer_and_are_not_restarted_during_it(broker, caplog):
    """A stop signalled to the process group (systemd, kill -TERM -PGID, torchrun)
    reaches the workers and the forkserver that starts them: the workers ignore SIGTERM
    and SIGINT, the forkserver holds them blocked (so it survives, and a worker never
    dies of one before it ignores it); and a worker that ends while the daemon stops is
    neither an error nor started again (it was, in the middle of the stop)."""
    from multiprocessing import forkserver

    from stream_trainer.config import KafkaSettings, parse_settings
    from stream_trainer.edges.ingest import IngestSource
    from stream_trainer.pipeline import build

    spec = parse_settings({"pipelines": [clicks_pipeline("t")]}).pipelines[0]
    stopping = threading.Event()
    src = IngestSource(
        _Group(), KafkaSettings(bootstrap_servers=broker.bootstrap), 1,
        group_id="g", client_id="c", security={},
        decoder_spec=build.featurizer_and_decoder(spec)[2], positions=dict, name="clicks",
        stopping=stopping.is_set,
    )  # fmt: skip
    try:
        (w,) = src.workers
        stop_bits = (1 << (signal.SIGTERM - 1)) | (1 << (signal.SIGINT - 1))
        deadline = time.monotonic() + 60  # until the worker has set its handlers
        while _signals(w.process.pid)["SigIgn"] & stop_bits != stop_bits:
            assert w.process.is_alive(), "the worker died"
            assert time.monotonic() < deadline, _signals(w.process.pid)  # it takes them
            time.sleep(0.05)
        assert _signals(forkserver._forkserver._forkserver_pid)["SigBlk"] & stop_bits == stop_bits
        stopping.set()
        os.kill(w.process.pid, signal.SIGKILL)  # the stop: whatever ends the worker now
        w.process.join(30)
        with caplog.at_level(logging.INFO, logger="stream_trainer.edges.ingest"):
            caplog.clear()  # (the start's line, captured when an earlier test left INFO on)
            assert src.poll(5.0) == []
        assert src.workers == []  # not restarted
        assert [r.getMessage() for r in caplog.records] == ["ingest worker ended during the stop"]
    finally:
        src.close()
