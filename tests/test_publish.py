"""``publish``: record batches written in one pass, through the real broker."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from kafka import KafkaProducer
from support import consume_all

from stream_trainer.edges.admin import create_topics
from stream_trainer.producers import make_generator
from stream_trainer.producers import publish as publish_module
from stream_trainer.producers.publish import publish


def test_keyed_events_go_where_kafka_pythons_partitioner_puts_them_in_order(broker, topic):
    """Per-key state (ticks, sensors) needs a key's events on one partition, in order,
    and on the partition any other Kafka client would choose for that key."""
    theirs = f"{topic}.kafka-python"
    create_topics(broker.bootstrap, {topic: 3, theirs: 3})
    events = list(make_generator("ticks", seed=3, count=600))
    assert publish(broker.bootstrap, topic, events, key_field="symbol", progress=False) == 600
    recs = consume_all(broker.bootstrap, topic, 600)
    assert len(recs) == 600
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
    keys = sorted({rec.key for rec in recs})
    for key in keys:  # the same keys through kafka-python's own producer
        producer.send(theirs, key=key, value=b"x")
    producer.flush(30)
    producer.close(5)
    where = {rec.key: rec.partition for rec in consume_all(broker.bootstrap, theirs, len(keys))}
    by_key: dict[bytes, list[float]] = {}
    for rec in recs:
        assert rec.partition == where[rec.key]
        by_key.setdefault(rec.key, []).append(json.loads(rec.value)["ts"])
    assert len(by_key) > 1 and all(ts == sorted(ts) for ts in by_key.values())
    sent = sorted(json.dumps(e, separators=(",", ":")).encode() for e in events)
    assert sorted(rec.value for rec in recs) == sent  # each event once, as encoded


def test_paced_events_carry_their_due_times_and_spread_over_the_partitions(broker, topic):
    create_topics(broker.bootstrap, {topic: 2})
    n, rate = 400, 2000.0
    values = [b'{"i":%d}' % i for i in range(n)]
    t0 = time.time()
    assert publish(broker.bootstrap, topic, values, rate=rate, linger_ms=5, progress=False) == n
    took = time.time() - t0
    recs = sorted(consume_all(broker.bootstrap, topic, n), key=lambda r: json.loads(r.value)["i"])
    assert [json.loads(r.value)["i"] for r in recs] == list(range(n))
    stamps = [r.timestamp for r in recs]
    assert stamps == sorted(stamps)  # the due times, in the stream's order
    assert (stamps[-1] - stamps[0]) / 1000 >= 0.9 * (n - 1) / rate  # paced
    assert took >= 0.9 * (n - 1) / rate
    assert {r.partition for r in recs} == {0, 1}  # unkeyed: chunks in turn


def test_a_connection_closed_under_a_send_is_sent_again(broker, topic, monkeypatch):
    """kafka-python raises from ``send`` itself when the connection closed under it
    ("Transport closed for writes": a clean-clone run's producer thread died of it, and
    its test waited for events that never came). The chunk is sent again: every event
    arrives, once."""
    create_topics(broker.bootstrap, {topic: 2})
    init, failed = publish_module._Chunks.__init__, []

    def closing_once(self, producer, bootstrap):
        init(self, producer, bootstrap)
        send = self.client.send

        def flaky(node, request):
            if not failed:
                failed.append(node)
                raise RuntimeError("Transport closed for writes")
            return send(node, request)

        self.client = SimpleNamespace(send=flaky)  # the real client, its first send failing

    monkeypatch.setattr(publish_module._Chunks, "__init__", closing_once)
    values = [b'{"i":%d}' % i for i in range(300)]
    assert publish(broker.bootstrap, topic, values, progress=False) == 300
    assert failed
    assert sorted(r.value for r in consume_all(broker.bootstrap, topic, 300)) == sorted(values)
