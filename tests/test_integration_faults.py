"""Bad input goes to the dead-letter topic with its reason; stop/restart loses nothing."""

from __future__ import annotations

import json
import time

import pytest
import torch
from fakes import CheckedThread
from support import Daemon, base_config, consume_all, produce, sample

from stream_trainer.edges.admin import create_topics
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration

GOOD = {"ts": 1767225600.0, "user_id": "u1", "item_id": "i1", "context": {}, "label": 1}
MALFORMED = {
    "not_json": [b"{not json", b"click!"],
    "not_object": [b"[1, 2, 3]", b'"a string"', b"42"],
    "missing_field": [json.dumps({k: v for k, v in GOOD.items() if k != "item_id"}).encode()],
    "wrong_type": [
        json.dumps({**GOOD, "label": "yes"}).encode(),
        json.dumps({**GOOD, "context": [1]}).encode(),
    ],
    "non_finite": [
        b'{"ts": 1767225600, "user_id": "u", "item_id": "i", "label": 1, '
        b'"context": {"score": NaN}}',
        b'{"ts": Infinity, "user_id": "u", "item_id": "i", "label": 0}',
    ],
    "invalid_utf8": [b'{"user_id": "\xff\xfe"}'],
    "empty": [b""],
    "bad_timestamp": [json.dumps({**GOOD, "ts": 1767225600000}).encode()],
}


def test_malformed_events_go_to_dead_letters_and_training_continues(
    broker, topic, workdir, metrics_port
):
    bs = broker.bootstrap
    create_topics(bs, {topic: 1})
    good = list(make_generator("clicks", seed=3, count=3000))
    bad = [(reason, raw) for reason, raws in MALFORMED.items() for raw in raws]
    stream: list[bytes] = []
    for i, ev in enumerate(good):  # interleave: bad events sit between good ones
        stream.append(json.dumps(ev).encode())
        if i % 200 == 0 and i // 200 < len(bad):
            stream.append(bad[i // 200][1])
    good_bytes = {json.dumps(e).encode() for e in good}
    assert sum(1 for s in stream if s not in good_bytes) == len(bad)
    produce(bs, topic, stream)

    cfg = base_config(
        bs, workdir / "ckpt", [{"name": "clicks", "kind": "clicks", "topics": [topic]}]
    )
    daemon = Daemon(cfg, workdir, metrics_port).start()
    try:
        m = daemon.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") == 3000,
            what="good events trained",
        )
    finally:
        assert daemon.terminate() == 0
    for reason, raws in MALFORMED.items():
        got = sample(m, "stream_trainer_events_rejected_total", pipeline="clicks", reason=reason)
        assert got == len(raws), (reason, got)
    assert sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") == len(stream)

    dead = consume_all(bs, f"{topic}.dlq", len(bad))
    assert len(dead) == len(bad)
    seen = sorted((dict(r.headers)["reason"].decode(), r.value) for r in dead)
    assert seen == sorted(bad)  # each original payload, byte for byte, with its reason
    for r in dead:
        headers = dict(r.headers)
        assert headers["source_topic"].decode() == topic
        assert int(headers["source_offset"]) >= 0


def _covered_offsets(docs: list[dict]) -> list[tuple[int, int]]:
    return sorted((d["partition"], d["offset"]) for d in docs)


def test_sigterm_halfway_then_restart_resumes_exactly(broker, topic, workdir, metrics_port):
    """SIGTERM mid-stream: final checkpoint + commit, exit 0; the restart resumes from the
    checkpoint's offsets, so every produced event is trained exactly once overall."""
    bs = broker.bootstrap
    n = 20_000
    create_topics(bs, {topic: 2})
    events = list(make_generator("clicks", seed=9, count=n))
    out_topic = f"{topic}.out"
    cfg = base_config(
        bs,
        workdir / "ckpt",
        [{"name": "clicks", "kind": "clicks", "topics": [topic], "output_topic": out_topic}],
    )

    def trickle() -> None:  # produce while the daemon trains, so SIGTERM lands mid-stream
        for k in range(0, n, 1000):
            produce(bs, topic, events[k : k + 1000], key_field="user_id")
            time.sleep(0.1)

    producer = CheckedThread(trickle, "trickle")  # join() raises what producing raised
    first = Daemon(cfg, workdir, metrics_port).start()
    try:
        first.wait_assigned("clicks", 2)
        producer.start()
        m = first.wait_for(
            lambda m: sample(m, "stream_trainer_events_trained_total", pipeline="clicks") >= 5000,
            what="5000 trained",
        )
    finally:
        assert first.terminate() == 0, first.log()[-2000:]
    assert sample(m, "stream_trainer_events_trained_total", pipeline="clicks") < n
    assert "stopping: final checkpoint and commit" in first.log()

    ckpts = sorted((workdir / "ckpt" / "clicks").glob("ckpt-*.pt"))
    state = torch.load(ckpts[-1], weights_only=True)
    done_first = state["counters"]["trained"]
    assert 5000 <= done_first < n
    assert sum(state["offsets"].values()) == done_first  # offsets agree with what was learned

    producer.join()
    second = Daemon(cfg, workdir, metrics_port).start()
    try:
        m = second.wait_for(
            lambda m: (
                sample(m, "stream_trainer_events_trained_total", pipeline="clicks")
                == n - done_first
            ),
            what="the rest trained",
        )
        time.sleep(1.0)  # nothing more may arrive: no replays
        m = second.metrics()
    finally:
        assert second.terminate() == 0
    assert sample(m, "stream_trainer_events_consumed_total", pipeline="clicks") == n - done_first
    assert "resumed from checkpoint" in second.log()

    docs = [json.loads(r.value) for r in consume_all(bs, out_topic, n)]
    offsets = _covered_offsets(docs)
    assert len(offsets) == n and len(set(offsets)) == n  # nothing skipped, nothing twice
    per_partition = {p: sorted(o for q, o in offsets if q == p) for p in (0, 1)}
    for p, offs in per_partition.items():
        assert offs == list(range(len(offs))), f"partition {p} has gaps"
    final = torch.load(
        sorted((workdir / "ckpt" / "clicks").glob("ckpt-*.pt"))[-1], weights_only=True
    )
    assert final["counters"]["trained"] == n
    assert sum(final["offsets"].values()) == n
