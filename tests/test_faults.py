"""Fault injection against the real broker, with the daemon as a subprocess.

Each test injects one fault and proves the promise it threatens: nothing learned is
lost or learned twice (the checkpoint's offset ledger), the daemon stays up and says
what happened, and readiness follows the broker.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from support import (
    REPO,
    Daemon,
    Trickle,
    base_config,
    consume_all,
    http_get,
    ledger_ranges,
    newest_checkpoint,
    produce,
    sample,
)

from stream_trainer.edges.admin import create_topics
from stream_trainer.edges.source import offset_and_metadata
from stream_trainer.events.avro import encode
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.producers import make_generator

CLICK_SCHEMA = json.loads((REPO / "tests" / "fixtures" / "avro" / "1.avsc").read_text())

pytestmark = pytest.mark.integration

FREEZE_S = 8.0  # in CI; the 30 s version is marked slow


@pytest.fixture
def own_broker():
    """A broker of this test's own: the test stops, freezes or replaces it."""
    b = LocalBroker(port=free_port()).start()
    yield b
    if b.proc is not None:
        os.kill(b.proc.pid, signal.SIGCONT)
    b.stop()


# a click log in its owner's shape, and the mapping to the clicks kind (docs/how-to)
MAPPED_GOOD = {
    "uid": "u1",
    "product": {"sku": "i1"},
    "event": "click",
    "event_time": "2026-01-01T00:00:00Z",
    "device": {"os": "ios"},
    "hour": 3,
}
MAPPED_FIELDS = {
    "ts": {"field": "event_time", "unit": "iso8601"}, "user_id": "uid",
    "item_id": "product.sku", "context": {"device": "device.os"},
    "label": {"field": "event", "positive": ["click", "purchase"], "negative": ["view"]},
}  # fmt: skip


def clicks_pipeline(topic: str, **extra) -> dict:
    return {"name": "clicks", "kind": "clicks", "topics": [topic], **extra}


def assert_exactly_once(state: dict, topic: str, sizes: dict[int, int]) -> None:
    """The final model state reflects every produced offset once: no gap, no overlap."""
    ranges = ledger_ranges(state)
    expected = {f"{topic}:{p}": [(0, n)] for p, n in sizes.items() if n}
    assert ranges == expected, (ranges, expected)
    assert state["ledger"]["duplicates"] == 0
    c = state["counters"]
    assert c["trained"] + c["seeded"] + c["rejected"] == sum(sizes.values())


def partition_sizes(bootstrap: str, topic: str, n: int) -> dict[int, int]:
    """Records per partition in the log: ``n`` produced, plus any copies a retrying
    producer wrote while the broker was unreachable."""
    sizes: dict[int, int] = {}
    for rec in consume_all(bootstrap, topic, 10 * n, timeout_s=5):
        sizes[rec.partition] = max(sizes.get(rec.partition, 0), rec.offset + 1)
    assert sum(sizes.values()) >= n
    return sizes


def saved_offsets(workdir: Path, pipeline: str = "clicks") -> dict[str, int]:
    """The next offsets in the pipeline's newest checkpoint ({} while there is none)."""
    try:
        return dict(newest_checkpoint(workdir / "ckpt", pipeline)["offsets"])
    except (IndexError, OSError, RuntimeError, EOFError):
        return {}


def errors_in(log: str) -> list[str]:
    """The log's error lines, tracebacks and deaths by signal."""
    return re.findall(r"^\S+ (?:error|critical)\b.*$|^Traceback.*$", log, re.M)


def wait_http(url: str, code: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if http_get(url)[0] == code:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {code} within {timeout_s}s: {http_get(url)}")


def test_kill_9_three_times_loses_nothing_and_learns_nothing_twice(broker, topic, workdir):
    n = 50_000
    bs = broker.bootstrap
    create_topics(bs, {topic: 2})
    events = list(make_generator("clicks", seed=21, count=n))
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    cfg["checkpoint"]["every_seconds"] = 1.0
    producer = Trickle(bs, topic, events, "user_id", rate=4000)
    rnd = random.Random(7)
    kills = []
    producer.start()
    for _ in range(3):
        d = Daemon(cfg, workdir).start()
        d.wait_for(
            lambda m: (
                (sample(m, "stream_trainer_events_trained_total", pipeline="clicks") or 0) > 0
            ),
            what="training under way",
        )
        time.sleep(rnd.uniform(0.2, 2.5))  # a random point mid-stream
        kills.append(sample(d.metrics(), "stream_trainer_events_trained_total", pipeline="clicks"))
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    producer.join()
    assert producer.sent == n
    # and the newest checkpoint is torn (as a dying disk would leave it): the previous one
    # must be used, with a warning, and the longer replay must still apply each event once
    newest = sorted((workdir / "ckpt" / "clicks").glob("ckpt-*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    last = Daemon(cfg, workdir).start()
    try:
        last.wait_for(
            lambda m: (
                all(
                    sample(
                        m,
                        "stream_trainer_consumer_lag",
                        pipeline="clicks",
                        topic=topic,
                        partition=str(p),
                    )
                    == 0
                    for p in (0, 1)
                )
                and (sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") or 0) > 0
            ),
            timeout_s=120,
            what="caught up after the kills",
        )
    finally:
        assert last.terminate() == 0
    assert len(kills) == 3 and all(k > 0 for k in kills)
    assert "skipping unreadable checkpoint" in last.log()
    assert_exactly_once(
        newest_checkpoint(workdir / "ckpt", "clicks"), topic, partition_sizes(bs, topic, n)
    )


def test_broker_freeze_readiness_follows_and_nothing_is_lost(own_broker, workdir):
    freeze_case(own_broker, workdir, FREEZE_S)


@pytest.mark.slow
def test_broker_freeze_30s(own_broker, workdir):
    """The full 30 s freeze (``pytest -m slow``); CI runs the shorter one above."""
    freeze_case(own_broker, workdir, 30.0)


def freeze_case(own_broker, workdir, freeze_s: float) -> None:
    bs = own_broker.bootstrap
    topic = "frozen"
    n = 12_000
    create_topics(bs, {topic: 2})
    events = list(make_generator("clicks", seed=22, count=n))
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    cfg["checkpoint"]["every_seconds"] = 1.0
    d = Daemon(cfg, workdir).start()
    try:
        d.wait_assigned("clicks", 2)
        ready = f"http://{d.address}/readyz"  # (the port it bound: known once it serves)
        wait_http(ready, 200, 60)
        producer = Trickle(bs, topic, events, "user_id", rate=1000)
        producer.start()
        d.wait_for(  # mid-stream: the trickle is being trained
            lambda m: (
                (sample(m, "stream_trainer_events_trained_total", pipeline="clicks") or 0) > 2000
            ),
            what="training the trickle",
        )
        os.kill(own_broker.proc.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        # readiness follows the broker down while it is frozen (how soon: the probe's
        # BROKER_DOWN_AFTER_S; a generous bound, not a speed claim)
        went_down = wait_http(ready, 503, 120)
        assert "not answering" in http_get(ready)[1]
        assert sample(d.metrics(), "stream_trainer_broker_up") == 0
        time.sleep(max(0.0, freeze_s - (time.monotonic() - frozen_at)))  # the fault itself
        assert d.proc.poll() is None  # still up
        assert http_get(f"http://{d.address}/healthz")[0] == 200
        os.kill(own_broker.proc.pid, signal.SIGCONT)
        came_back = wait_http(ready, 200, 120)
        producer.join(timeout=120)
        assert producer.sent == n
        total = sum(partition_sizes(bs, topic, n).values())
        d.wait_for(
            lambda m: sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") == total,
            timeout_s=90,
            what="caught up after the freeze",
        )
    finally:
        code = d.terminate()
    assert code == 0
    print(
        f"freeze {freeze_s:.0f}s: not ready after {went_down:.1f}s, ready {came_back:.1f}s "
        "after thaw"
    )
    assert_exactly_once(
        newest_checkpoint(workdir / "ckpt", "clicks"), topic, partition_sizes(bs, topic, n)
    )


def test_broker_restarted_empty_is_reported_and_training_carries_on(own_broker, workdir):
    bs = own_broker.bootstrap
    topic = "volatile"
    create_topics(bs, {topic: 1})
    produce(bs, topic, list(make_generator("clicks", seed=23, count=2000)), "user_id")
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    cfg["checkpoint"]["every_seconds"] = 1.0
    d = Daemon(cfg, workdir, own_group=True).start()
    try:
        d.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 2000,
            what="first log trained",
        )
        d.wait_for(lambda m: saved_offsets(workdir) == {f"{topic}:0": 2000},
                   what="a checkpoint holds offset 2000")  # fmt: skip
        own_broker.stop()  # memory storage: everything is gone
        d.wait_for(lambda m: sample(m, "stream_trainer_broker_up") == 0,
                   what="the daemon sees the broker gone")  # fmt: skip
        # the topic comes back as its owner makes it (one partition) before the daemon
        # asks for it: Tansu creates any topic a client asks metadata for (4 partitions,
        # whatever the client's allow_auto_topic_creation), and the daemon's consumers
        # ask every few hundred ms (under load they won the race now and then)
        os.killpg(d.proc.pid, signal.SIGSTOP)
        try:
            own_broker.start()
            create_topics(bs, {topic: 1})
            produce(bs, topic, list(make_generator("clicks", seed=24, count=1000)), "user_id")
        finally:
            os.killpg(d.proc.pid, signal.SIGCONT)
        m = d.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 3000,
            timeout_s=90,
            what="new data trained after the broker restart",
        )
        assert (
            sample(
                m,
                "stream_trainer_offset_resets_total",
                pipeline="clicks",
                topic=topic,
                partition="0",
            )
            == 1
        )
        assert http_get(f"http://{d.address}/healthz")[0] == 200
    finally:
        assert d.terminate() == 0
    assert "offset reset: the partition's log went back" in d.log()
    state = newest_checkpoint(workdir / "ckpt", "clicks")
    assert ledger_ranges(state) == {f"{topic}:0": [(0, 1000)]}
    assert state["ledger"]["epochs"] == {f"{topic}:0": 1}
    assert state["offsets"] == {f"{topic}:0": 1000}
    assert state["counters"]["trained"] == 3000  # nothing learned before the restart is lost


def test_sigterm_under_load_checkpoints_commits_and_exits_cleanly(broker, topic, workdir):
    """Exit 0, and the final checkpoint's offsets are the group's commits (how long it
    takes is printed, not asserted: speed belongs in benchmarks)."""
    from kafka import KafkaConsumer, TopicPartition

    bs = broker.bootstrap
    create_topics(bs, {topic: 2})
    events = list(make_generator("clicks", seed=25, count=60_000))
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    cfg["checkpoint"]["every_seconds"] = 30.0  # the final checkpoint does all the work
    d = Daemon(cfg, workdir).start()
    producer = Trickle(bs, topic, events, "user_id", rate=8000)
    try:
        d.wait_assigned("clicks", 2)
        producer.start()
        d.wait_for(
            lambda m: (
                (sample(m, "stream_trainer_events_trained_total", pipeline="clicks") or 0) > 10_000
            ),
            what="load",
        )
        t0 = time.monotonic()
        d.terminate()  # exit 0 (asserted there)
        took = time.monotonic() - t0
    finally:
        d.kill()
    producer.join()
    state = newest_checkpoint(workdir / "ckpt", "clicks")
    c = KafkaConsumer(
        bootstrap_servers=bs,
        group_id=f"{cfg['kafka']['group_prefix']}.clicks",
        enable_auto_commit=False,
    )
    committed = {f"{topic}:{p}": c.committed(TopicPartition(topic, p)) for p in (0, 1)}
    c.close()
    assert committed == state["offsets"], (committed, state["offsets"])
    print(f"SIGTERM under load: exit 0 in {took:.2f}s")


def test_second_signal_exits_at_once(broker, topic, workdir):
    """The first SIGINT starts a graceful stop (slow here: each step takes 0.2 s); the
    second one ends the process at once, without waiting for it."""
    bs = broker.bootstrap
    create_topics(bs, {topic: 1})
    produce(bs, topic, [{"x": i / 100, "y": i / 50} for i in range(3000)])
    slow = {
        "name": "slow",
        "kind": "custom",
        "topics": [topic],
        "featurizer": "plugin_example:MeanFeaturizer",
        "model": "plugin_example:build_slow",
        "batch": {"max_size": 100, "max_latency_ms": 60000},
    }
    d = Daemon(
        base_config(bs, workdir / "ckpt", [slow]),
        workdir,
        env={"PYTHONPATH": str(REPO / "tests")},
    ).start()
    d.wait_for(
        lambda m: (sample(m, "stream_trainer_events_trained_total", pipeline="slow") or 0) > 0,
        what="training",
    )
    d.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while "stopping: final checkpoint" not in d.log():
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()[-3000:]
        time.sleep(0.01)
    d.proc.send_signal(signal.SIGINT)
    code = d.proc.wait(60)
    # 130 is the second signal's hard exit (os._exit: at once, whatever the graceful stop
    # was doing); a graceful stop that had finished first would have exited 0
    assert code == 130, (code, d.log()[-3000:])
    assert "second signal: exiting now" in d.log()


def test_poison_input_is_dead_lettered_counted_and_never_stops_training(broker, topic, workdir):
    bs = broker.bootstrap
    ticks_topic = f"{topic}-ticks"
    create_topics(bs, {topic: 1, ticks_topic: 1})
    good = {"ts": 1767225600.0, "user_id": "u1", "item_id": "i1", "context": {}, "label": 1}
    tick = {"ts": 1767225600.0, "symbol": "A", "price": 10.0, "volume": 1.0}
    enc = lambda d: json.dumps(d).encode()  # noqa: E731
    poison = {  # reason -> raw payloads
        "invalid_utf8": [b'{"user_id": "\xc3\x28"}'],
        "not_json": [b"{'single': 'quotes'}", b"<xml/>"],
        "not_object": [b"[]", b"null", b"3.14"],
        "empty": [b""],
        "missing_field": [enc({k: v for k, v in good.items() if k != "label"})],
        "wrong_type": [enc({**good, "label": "1"}), enc({**good, "item_id": {"id": 1}})],
        "non_finite": [
            enc(good).replace(b'"label": 1', b'"label": 1, "ts": NaN'),
            b'{"ts": 1767225600, "user_id": "u", "item_id": "i", "label": 1,'
            b' "context": {"w": -Infinity}}',
        ],
        "bad_timestamp": [
            enc({**good, "ts": 4.2e9 * 10}),
            enc({**good, "ts": -1.0}),
            enc({**good, "ts": 1767225600123}),
        ],
        "out_of_range": [enc({**good, "user_id": "x" * 1000})],
        "too_large": [enc({**good, "user_id": "x" * (1 << 20)}), b" " * (2 << 20)],
        "too_deep": [b"[" * 50_000 + b"]" * 50_000],
        "duplicate": [enc({**good, "user_id": "dup"})],
    }
    tick_poison = {
        "out_of_range": [
            enc({**tick, "price": 1e308}),
            enc({**tick, "price": -5.0}),
            enc({**tick, "volume": -1}),
        ],
        "non_finite": [enc(tick).replace(b"10.0", b"NaN")],
    }
    # the user's own events (a fields: mapping, Avro): each bad one names its field's path
    mapped_good = enc(MAPPED_GOOD)
    mapped_poison = {  # reason -> (raw payload, the dead letter's detail starts with)
        "missing_field": [(enc({**MAPPED_GOOD, "product": {}}), "product.sku")],
        "wrong_type": [(enc({**MAPPED_GOOD, "uid": ["u"]}), "uid: ")],
        "out_of_range": [(enc({**MAPPED_GOOD, "event": "hover"}), "event: ")],
        "bad_timestamp": [(enc({**MAPPED_GOOD, "event_time": "soon"}), "event_time: ")],
    }
    (workdir / "click.avsc").write_text(json.dumps(CLICK_SCHEMA))
    avro_good = encode(MAPPED_GOOD, CLICK_SCHEMA)
    avro_poison = {
        "not_avro": [(avro_good[:-4], "not Avro"), (mapped_good, "")],
        "bad_timestamp": [(encode({**MAPPED_GOOD, "event_time": "soon"}, CLICK_SCHEMA),
                           "event_time: ")],
    }  # fmt: skip
    for name, good_raw, table in (("mapped", mapped_good, mapped_poison),
                                  ("avro", avro_good, avro_poison)):  # fmt: skip
        bad = [raw for cases in table.values() for raw, _ in cases]
        create_topics(bs, {f"{topic}-{name}": 1})
        others = [good_raw.replace(b"u1", b"u%d" % i) for i in (0, *range(2, 10))]
        produce(bs, f"{topic}-{name}", others + bad + [good_raw])
    clean = [enc(e) for e in make_generator("clicks", seed=27, count=2000)]
    unknown = enc({**good, "user_id": "u-unknown", "campaign": "x", "nested": {"a": [1]}})
    stream = clean[:1000] + [enc({**good, "user_id": "dup"}), unknown]
    stream += [raw for raws in poison.values() for raw in raws] + clean[1000:]
    produce(bs, topic, stream)
    ticks = [enc(e) for e in make_generator("ticks", seed=28, count=1000)]
    produce(
        bs, ticks_topic, ticks[:500] + [r for rs in tick_poison.values() for r in rs] + ticks[500:]
    )
    cfg = base_config(
        bs,
        workdir / "ckpt",
        [
            clicks_pipeline(topic),
            {"name": "ticks", "kind": "ticks", "topics": [ticks_topic]},
            {"name": "mapped", "kind": "clicks", "topics": [f"{topic}-mapped"],
             "fields": MAPPED_FIELDS},
            {"name": "avro", "kind": "clicks", "topics": [f"{topic}-avro"],
             "fields": MAPPED_FIELDS, "format": "avro",
             "avro": {"schema": str(workdir / "click.avsc")}},
        ],
    )  # fmt: skip
    d = Daemon(cfg, workdir).start()
    n_bad = sum(len(v) for v in poison.values())
    n_user_bad = {"mapped": sum(map(len, mapped_poison.values())),
                  "avro": sum(map(len, avro_poison.values()))}  # fmt: skip
    n_tick_bad = sum(len(v) for v in tick_poison.values())
    try:
        m = d.wait_for(
            lambda m: (
                sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") == len(stream)
                and sample(m, "stream_trainer_events_consumed_total", pipeline="ticks")
                == 1000 + n_tick_bad
                and all(
                    sample(m, "stream_trainer_events_consumed_total", pipeline=p) == 10 + n
                    for p, n in n_user_bad.items()
                )
            ),
            what="everything consumed",
        )
        time.sleep(0.5)
        m = d.metrics()
    finally:
        assert d.terminate() == 0
    for pipeline, table in (("clicks", poison), ("ticks", tick_poison)):
        for reason, raws in table.items():
            got = sample(
                m, "stream_trainer_events_rejected_total", pipeline=pipeline, reason=reason
            )
            assert got == len(raws), (pipeline, reason, got)
    # good events (and the one with unknown fields, and the first copy of the duplicate)
    assert sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 2002
    dead = consume_all(bs, f"{topic}.dlq", n_bad)
    assert sorted((dict(r.headers)["reason"].decode(), r.value) for r in dead) == sorted(
        (reason, raw) for reason, raws in poison.items() for raw in raws
    )
    assert len(consume_all(bs, f"{ticks_topic}.dlq", n_tick_bad)) == n_tick_bad
    for name, table in (("mapped", mapped_poison), ("avro", avro_poison)):
        assert sample(m, "stream_trainer_events_trained_total", pipeline=name) == 10
        dead = consume_all(bs, f"{topic}-{name}.dlq", n_user_bad[name])
        got = sorted((dict(r.headers)["reason"].decode(), r.value) for r in dead)
        assert got == sorted((reason, raw) for reason, cases in table.items() for raw, _ in cases)
        starts = {r.value: dict(r.headers)["detail"].decode() for r in dead}
        for cases in table.values():
            for raw, start in cases:
                assert starts[raw].startswith(start), (name, starts[raw], start)
    for name in ("clicks", "ticks"):
        state = newest_checkpoint(workdir / "ckpt", name)
        for k, v in state["learner"]["model"].items():
            assert torch.isfinite(v).all(), (name, k)


def test_a_partition_the_checkpoint_never_saw_is_read_from_its_start(broker, topic, workdir):
    """The group may hold a commit from a newer checkpoint that was lost; the restored
    model state never learned that partition, so it must start at the log's beginning."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    bs = broker.bootstrap
    create_topics(bs, {topic: 2})
    events = [json.dumps(e).encode() for e in make_generator("clicks", seed=5, count=3000)]
    producer = KafkaProducer(bootstrap_servers=bs, linger_ms=5)
    for v in events[:2000]:  # partition 0 only: the first checkpoint knows nothing else
        producer.send(topic, value=v, partition=0)
    producer.flush()
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    d = Daemon(cfg, workdir).start()
    d.wait_for(
        lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 2000,
        what="partition 0 trained",
    )
    assert d.terminate() == 0
    assert f"{topic}:1" not in newest_checkpoint(workdir / "ckpt", "clicks")["offsets"]
    for v in events[2000:]:
        producer.send(topic, value=v, partition=1)
    producer.flush()
    producer.close()
    # a commit for partition 1 that no surviving checkpoint holds
    prefix = cfg["kafka"].get("group_prefix", "stream-trainer")
    group = KafkaConsumer(bootstrap_servers=bs, group_id=f"{prefix}.clicks")
    group.commit({TopicPartition(topic, 1): offset_and_metadata(600)})
    group.close()
    d = Daemon(cfg, workdir).start()
    try:
        d.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 1000,
            what="all of partition 1 trained (this process counts from 0)",
        )
    finally:
        assert d.terminate() == 0
    state = newest_checkpoint(workdir / "ckpt", "clicks")
    assert ledger_ranges(state) == {f"{topic}:0": [(0, 2000)], f"{topic}:1": [(0, 1000)]}
    assert f"from_log_start={topic}:1" in d.log()


def test_sigterm_during_the_start_up_is_a_clean_stop(broker, topic, workdir):
    """A supervisor that stops a daemon it has just started sees exit 0 and a log line,
    not a death by signal (143). The start-up is held here in a plugin's import (as
    torch's import holds it for seconds on a busy machine) until the signal is sent."""
    gate = workdir / "gate"
    create_topics(broker.bootstrap, {topic: 1})
    gated = {
        "name": "gated",
        "kind": "custom",
        "topics": [topic],
        "featurizer": "gated_plugin:MeanFeaturizer",
        "model": "gated_plugin:build",
    }
    d = Daemon(
        base_config(broker.bootstrap, workdir / "ckpt", [gated]),
        workdir,
        env={"PYTHONPATH": str(REPO / "tests"), "STREAM_TRAINER_TEST_GATE": str(gate)},
    ).start()
    try:
        deadline = time.monotonic() + 60
        while not gate.with_suffix(".reached").exists():  # inside the plugin's import
            assert time.monotonic() < deadline and d.proc.poll() is None, d.log()[-3000:]
            time.sleep(0.02)
        d.send_stop()
        gate.touch()  # the import goes on: the start-up ends, and the daemon stops
        code = d.proc.wait(60)
    finally:
        d.kill()
    log = d.log()
    assert code == 0, (code, log[-3000:])
    assert "signal=SIGTERM" in log and "stopped before the pipelines started" in log, log[-3000:]
    assert errors_in(log) == [], log[-3000:]


def test_the_stop_handler_is_in_place_before_torch_is_imported():
    """The entry point installs it first; the imports before it never reach torch (the
    seconds of a start-up): `stream-trainer` calls cli.main, `python -m` __main__."""
    probe = (
        "import sys; import stream_trainer.cli, stream_trainer.stopping; "
        "print(sorted(m for m in ('torch', 'numpy', 'pydantic', 'kafka') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == "[]", (out.stdout, out.stderr)


def test_a_stop_signalled_to_the_whole_process_group_is_as_quiet_and_complete(
    broker, topic, workdir
):
    """systemd's default KillMode (control-group), `kill -TERM -PGID` and torchrun signal
    every process of the daemon at once: the ingest workers, the serving process and the
    forkserver that starts them too. They leave the stop to the daemon, as in a stop of
    the daemon alone: no worker restarted, nothing logged as an error, exit 0, and the
    final checkpoint (the only one here) holds every offset once. (Before: "ingest worker
    died; starting another" in the middle of the stop; under torchrun, whose SIGTERM is
    a group's, that restart held up a replica's last round.)"""
    bs = broker.bootstrap
    n = 6000
    create_topics(bs, {topic: 2})
    produce(bs, topic, list(make_generator("clicks", seed=26, count=n)), "user_id")
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)],
                      ingest={"workers": 2}, serving={"address": "127.0.0.1:0"})  # fmt: skip
    cfg["checkpoint"]["every_seconds"] = 3600.0  # the final checkpoint is the only one
    d = Daemon(cfg, workdir, own_group=True).start()
    try:
        d.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == n,
            what="everything trained",
        )
        started = re.search(r"ingest workers started .*pids=([\d,]+)", d.log())
        assert started, d.log()[-3000:]
        workers = [int(pid) for pid in started.group(1).split(",")]
        assert len(workers) == 2 and all(os.getpgid(w) == d.proc.pid for w in workers)
        os.killpg(d.proc.pid, signal.SIGTERM)  # the daemon, its workers, serving, forkserver
        code = d.proc.wait(60)
    finally:
        d.kill()
    log = d.log()
    assert code == 0, log[-5000:]
    assert errors_in(log) == [], log[-5000:]
    assert "ingest worker died" not in log and "ingest worker started" not in log, log[-5000:]
    assert "the serving process exited" not in log, log[-5000:]
    assert_exactly_once(
        newest_checkpoint(workdir / "ckpt", "clicks"), topic, partition_sizes(bs, topic, n)
    )


def test_a_stop_that_cannot_write_its_final_checkpoint_says_so_and_fails(broker, topic, workdir):
    """A graceful stop leaves its final checkpoint or says loudly why not: an error line
    and exit code 1, not a warning and 0 (a restart replays from the last checkpoint)."""
    bs = broker.bootstrap
    create_topics(bs, {topic: 1})
    produce(bs, topic, list(make_generator("clicks", seed=29, count=2000)), "user_id")
    cfg = base_config(bs, workdir / "ckpt", [clicks_pipeline(topic)])
    cfg["checkpoint"]["every_seconds"] = 3600.0
    d = Daemon(cfg, workdir).start()
    try:
        d.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 2000,
            what="everything trained",
        )
        (workdir / "ckpt").mkdir(exist_ok=True)
        (workdir / "ckpt" / "clicks").write_text("a file where the directory should be\n")
        d.send_stop()
        code = d.proc.wait(60)
    finally:
        d.kill()
    log = d.log()
    assert code == 1, (code, log[-3000:])
    assert "checkpoint postponed" in log, log[-3000:]
    assert any("stopped without the final checkpoint" in line for line in errors_in(log)), log
