"""Delayed labels through the pipeline (fakes, no broker): every impression ends once,
scored with its impression-time prediction, across an abort and resume."""

from __future__ import annotations

import json

import pytest
from fakes import ListSink, ListSource, run_until
from test_pipeline import settings

from stream_trainer.pipeline.core import Pipeline
from stream_trainer.producers import make_generator
from stream_trainer.producers.delayed import IMPRESSION, delayed_labels


def streams(n, seed=1, max_delay_s=30.0):
    imps, labs = [], []
    for kind, doc in delayed_labels(
        make_generator("clicks", seed=seed, count=n), seed=seed, max_delay_s=max_delay_s
    ):
        (imps if kind == IMPRESSION else labs).append(json.dumps(doc).encode())
    return imps, labs


def joined(tmp_path, **labels):
    s = settings(tmp_path, output_topic="out", labels={"topic": "l", "window_s": 60, **labels})
    return s, Pipeline(s, s.pipelines[0])


def ends(p):
    """Impressions labelled, expired or waiting for a label (a labelled one waits in
    ``pending`` too, until its window ends: ``held``)."""
    c, j = p.joiner.counts, p.joiner
    return c["labelled"] + c["negative"] + c["dropped"] + len(j.pending) - j.held


def trained(p):
    """Examples the joiner released: labelled and negative, but the labelled still held."""
    c = p.joiner.counts
    return c["labelled"] + c["negative"] - p.joiner.held


def test_every_impression_ends_once_and_is_scored_at_impression_time(tmp_path):
    imps, labs = streams(3000)
    s, p = joined(tmp_path)
    sink = ListSink()
    run_until(p, ListSource({("t", 0): imps, ("l", 0): labs}, {}), sink)
    c = p.joiner.counts
    assert ends(p) == len(imps) and c["labelled"] == len(labs)  # delays < window: all join
    assert c["negative"] > c["labelled"] > 0 and c["dropped"] == 0
    assert p.counters["trained"] == trained(p) and p.joiner.held > 0
    assert p.next_offsets == {("t", 0): len(imps), ("l", 0): len(labs)}
    ledger = p.offsets.ledger  # one range per partition, each offset once
    assert {tp: ledger.ranges(tp) for tp in ledger.partitions()} == {
        ("t", 0): [(0, len(imps))],
        ("l", 0): [(0, len(labs))],
    }
    assert ledger.duplicates == 0
    # a labelled example's output is its prediction at impression time (no leakage)
    _, p2 = joined(tmp_path / "b")
    p2.joiner.handle(p2, [_rec("t", i, v) for i, v in enumerate(imps[:50])])
    at_impression = {rid: w.prediction for rid, w in p2.joiner.pending.items()}
    p2.learner.model.mlp[2].bias.data += 5.0  # later weights: very different predictions
    clicked = [
        json.loads(v)["request_id"] for v in labs if json.loads(v)["request_id"] in at_impression
    ]
    assert clicked
    t_end = json.loads(imps[49])["ts"]
    label_recs = [_rec("l", i, json.dumps({"request_id": r, "label": 1, "ts": t_end}).encode())
                  for i, r in enumerate(clicked)]  # fmt: skip
    later = {"ts": t_end + 1000, "user_id": "u", "item_id": "i"}  # both topics: every window ends
    label_recs += [_doc("t", 50, **later, request_id="z"),
                   _doc("l", len(clicked), **later, request_id="y", label=1)]  # fmt: skip
    p2.sink = ListSink()
    p2.joiner.handle(p2, label_recs)
    p2.flush()
    got = {d["offset"]: (d["prediction"], d["target"]) for _, d in p2.sink.outputs}
    assert len(got) == 50  # the clicked and the rest (negatives), each at impression time
    for i, v in enumerate(imps[:50]):
        rid = json.loads(v)["request_id"]
        assert got[i] == (pytest.approx(at_impression[rid], rel=1e-6), float(rid in clicked))


def test_a_joined_click_waits_for_its_window_with_the_negatives_of_its_time(tmp_path):
    """Released when it came, every id new in the last window would be learned from its
    clicks alone (a fresh model, a new item, a new hour of the day): the delay biased it."""
    _, p = joined(tmp_path)  # window 60 s
    imp = {"ts": 1000.0, "user_id": "u", "item_id": "i"}
    recs = [_doc("t", i, **{**imp, "ts": 1000.0 + i}, request_id=f"r{i}") for i in range(10)]
    recs.append(_doc("l", 0, request_id="r3", label=1, ts=1005))
    p.joiner.handle(p, recs)
    assert p.joiner.counts["labelled"] == 1 and p.joiner.held == 1
    assert len(p.batcher) == 0  # joined, not yet an example
    later = {"ts": 1065.0, "user_id": "u", "item_id": "i"}
    p.joiner.handle(p, [_doc("t", 10, **later, request_id="z"),
                        _doc("l", 1, **later, request_id="y", label=1)])  # fmt: skip
    items = p.batcher.take()
    assert [(it.event["request_id"], it.event["label"]) for it in items] == [
        ("r0", 0), ("r1", 0), ("r2", 0), ("r3", 1), ("r4", 0)]  # impression order  # fmt: skip
    assert p.joiner.held == 0 and len(p.joiner.pending) == 6


def _rec(topic, offset, value):
    from stream_trainer.pipeline.ports import Record

    return Record(topic, 0, offset, 0, None, value)


def _doc(topic, offset, **doc):
    return _rec(topic, offset, json.dumps(doc).encode())


def test_odd_labels_are_counted_by_reason(tmp_path):
    _, p = joined(tmp_path, on_expiry="drop", max_pending=3)
    p.sink = ListSink()
    imp = {"ts": 1000.0, "user_id": "u", "item_id": "i"}
    lab = {"label": 1, "ts": 1001.0}
    recs = [
        _rec("l", 0, json.dumps({**lab, "request_id": "early"}).encode()),
        *[_rec("t", i, json.dumps({**imp, "request_id": f"r{i}"}).encode()) for i in range(5)],
        _rec("t", 5, json.dumps({**imp, "request_id": "early"}).encode()),
        _rec("t", 6, json.dumps(imp).encode()),  # no request_id: rejected
        _rec("t", 7, json.dumps({**imp, "request_id": "r4"}).encode()),  # a repeat
        _rec("l", 1, json.dumps({**lab, "request_id": "r4"}).encode()),
        _rec("l", 2, json.dumps({**lab, "request_id": "r4"}).encode()),  # twice
        _rec("l", 3, json.dumps({**lab, "request_id": "r0"}).encode()),  # evicted: late
        _rec("l", 4, b'{"request_id": "r3", "label": 2, "ts": 1001}'),  # bad
        _rec("l", 5, json.dumps({**lab, "request_id": "r3", "ts": 5000.0}).encode()),  # late
        _rec("l", 6, json.dumps({**lab, "request_id": "ghost"}).encode()),
        _rec("t", 8, json.dumps({**imp, "ts": 9000.0, "request_id": "last"}).encode()),
    ]
    p.joiner.handle(p, recs)
    c = p.joiner.counts
    assert c["early"] == 2 and c["orphaned"] == 1  # "ghost" never came
    # a joined impression waits in pending too: "early" joining pushed r2 out
    assert (c["duplicate"], c["late"], c["bad"], c["evicted"]) == (1, 2, 1, 3)
    assert c["labelled"] == 2 and c["dropped"] == 4  # early + r4; r0, r1, r2 evicted, r3
    assert list(p.joiner.pending) == ["last"]
    assert p.counters["rejected"] == 3  # no request_id, repeated impression, bad label
    assert p.next_offsets == {("t", 0): 9, ("l", 0): 7}


@pytest.mark.parametrize("delay, outcome", [(59.0, "labelled"), (61.0, "negative")])
def test_a_label_ends_its_impression_alike_whichever_topic_is_read_first(tmp_path, delay, outcome):
    """A consumer may read the labels topic ahead of the impressions (after a restart, a
    backlog): a label beyond the window is late even when it comes before its impression."""
    imp = _rec("t", 0, json.dumps({"ts": 1000.0, "user_id": "u", "item_id": "i",
                                   "request_id": "a"}).encode())  # fmt: skip
    lab = _rec("l", 0, json.dumps({"request_id": "a", "label": 1, "ts": 1000.0 + delay}).encode())
    for name, order in (("imp", [imp, lab]), ("lab", [lab, imp])):
        _, p = joined(tmp_path / name)  # window_s 60
        p.sink = ListSink()
        p.joiner.handle(p, order)
        c, pending = p.joiner.counts, p.joiner.pending
        assert (c["labelled"], c["negative"]) == (outcome == "labelled", outcome == "negative")
        assert c["late"] == (outcome == "negative"), name
        # joined: held with its label for its window's end; late: ended as a negative
        assert [w.label for w in pending.values()] == ([1] if outcome == "labelled" else [])


def test_impressions_expire_by_event_time_whatever_order_partitions_were_read_in(tmp_path):
    """Partition 0 read to its end before partition 1 (a consumer catching up): partition
    1's old impressions expire as soon as partition 0's, not once its newer ones do."""
    from stream_trainer.pipeline.ports import Record

    def imp(part, i):
        doc = {"ts": 1000.0 + i, "user_id": "u", "item_id": "i", "request_id": f"{part}.{i}"}
        return Record("t", part, i, 0, None, json.dumps(doc).encode())

    lab = _rec("l", 0, json.dumps({"request_id": "x", "label": 1, "ts": 1200.0}).encode())
    _, p = joined(tmp_path)  # window_s 60
    p.sink = ListSink()
    p.joiner.handle(p, [lab, *[imp(0, i) for i in range(101)], *[imp(1, i) for i in range(101)]])
    # event time 1100 (both partitions' newest): what is older than 1040 ended, in both
    assert p.joiner.counts["negative"] == 2 * 40
    assert sorted(w.event["ts"] for w in p.joiner.pending.values()) == sorted(
        [1000.0 + i for i in range(40, 101)] * 2
    )
    _, q = joined(tmp_path / "restored")  # the same from a checkpoint of the state
    q.joiner.load_state_dict(p.joiner.state_dict())
    q.sink = ListSink()
    q.joiner.handle(q, [imp(0, 150), imp(1, 150)])  # event time 1150: older than 1090 ends
    assert q.joiner.counts["negative"] == 2 * 90 and len(q.joiner.pending) == 2 * (11 + 1)


def test_a_log_that_went_back_starts_its_event_time_over(tmp_path):
    """The broker lost its logs (the demo's in-memory broker on a second run) and the new
    logs' events are older than the ones read before: they wait for their labels and
    their window as usual, not end at once as negatives whose labels come late."""
    imp = {"user_id": "u", "item_id": "i"}
    _, p = joined(tmp_path)  # window_s 60
    p.sink = ListSink()
    p.joiner.handle(p, [_doc("t", 0, ts=5000.0, request_id="old", **imp),
                        _doc("l", 0, ts=5001.0, request_id="x", label=1)])  # fmt: skip
    # the new logs: offsets from 0 again, event time from 1000
    p.joiner.handle(p, [_doc("t", 0, ts=1000.0, request_id="a", **imp),
                        _doc("l", 0, ts=1005.0, request_id="a", label=1)])  # fmt: skip
    assert p.counters["offset_resets"] == 2
    assert p.joiner.pending["a"].label == 1 and p.counters["trained"] == 0  # its window
    news = [_doc("t", i, ts=1000.0 + i, request_id=f"n{i}", **imp) for i in range(1, 62)]
    p.joiner.handle(p, [*news, _doc("l", 1, ts=1061.0, request_id="y", label=1)])
    p.flush()
    c = p.joiner.counts
    assert (c["labelled"], c["negative"], c["late"]) == (1, 0, 0)  # "a" ended, labelled
    assert "a" not in p.joiner.pending and "old" in p.joiner.pending
    assert p.counters["trained"] == 1


def test_abort_and_resume_ends_every_impression_exactly_once(tmp_path):
    imps, labs = streams(4000, seed=2)
    data = {("t", 0): imps, ("l", 0): labs}
    s, first = joined(tmp_path)
    run_until(first, ListSource(data, {}, batch=100), ListSink(), stop_after_polls=15)
    saved = first.store.load_latest()
    assert 0 < saved["offsets"]["t:0"] < len(imps)
    second = Pipeline(s, s.pipelines[0])
    assert second.restore()
    assert len(second.joiner.pending) == len(first.joiner.pending) > 0
    run_until(second, ListSource(data, second.resume_offsets()), ListSink())
    assert ends(second) == len(imps) and second.joiner.counts["labelled"] == len(labs)
    assert second.counters["trained"] == trained(second)


class _LateLabelsPartition(ListSource):
    """Serves ("l", 1) only once every impression is read: a labels partition that an
    ingest worker fetches seconds after the others."""

    def poll(self, timeout_s, max_records=None):
        held = ("l", 1)
        if self.pos[("t", 0)] >= len(self.data[("t", 0)]):
            return super().poll(timeout_s, max_records)
        saved, self.pos[held] = self.pos[held], len(self.data[held])
        try:
            return super().poll(timeout_s, max_records)
        finally:
            self.pos[held] = saved


def test_nothing_expires_while_a_partition_with_records_is_unread(tmp_path):
    imps, labs = streams(3000)
    s, p = joined(tmp_path)
    data = {("t", 0): imps, ("l", 0): labs[0::2], ("l", 1): labs[1::2]}
    run_until(p, _LateLabelsPartition(data, {}), ListSink())
    c = p.joiner.counts
    assert c["labelled"] == len(labs) and c["late"] == 0
    assert ends(p) == len(imps)
