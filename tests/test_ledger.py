from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_trainer.events.dedup import Deduper
from stream_trainer.pipeline.ledger import OffsetLedger

TP = ("t", 0)


@given(st.lists(st.integers(0, 200), max_size=300))
def test_ranges_are_the_set_and_duplicates_the_repeats(offsets):
    led = OffsetLedger()
    for o in offsets:
        led.add(TP, o)
    covered = {o for a, b in led.ranges(TP) for o in range(a, b)}
    assert covered == set(offsets)
    assert led.duplicates == len(offsets) - len(set(offsets))
    ranges = led.ranges(TP)
    assert all(a < b for a, b in ranges)
    assert all(b1 < a2 for (_, b1), (a2, _) in zip(ranges, ranges[1:], strict=False))


@given(st.lists(st.tuples(st.integers(0, 100), st.integers(1, 20)), max_size=40))
def test_add_range_matches_adding_one_by_one(spans):
    a, b = OffsetLedger(), OffsetLedger()
    for start, length in spans:
        a.add_range(TP, start, start + length)
        for o in range(start, start + length):
            b.add(TP, o)
    assert a.ranges(TP) == b.ranges(TP) and a.duplicates == b.duplicates


def test_state_round_trip_and_reset(tmp_path):
    import torch

    led = OffsetLedger()
    for o in [*range(0, 50), *range(60, 70)]:
        led.add(("t", 1), o)
    led.add(("u", 0), 5)
    led.reset(("u", 0))
    led.add(("u", 0), 0)
    torch.save(led.state_dict(), tmp_path / "l.pt")
    back = OffsetLedger()
    back.load_state_dict(torch.load(tmp_path / "l.pt", weights_only=True))
    assert back.ranges(("t", 1)) == [(0, 50), (60, 70)]
    assert back.ranges(("u", 0)) == [(0, 1)] and back.epochs == {("u", 0): 1}


def test_dedup_window_and_state(tmp_path):
    import torch

    d = Deduper(window=3)
    assert [d.seen(x) for x in (b"a", b"b", b"a", b"c", b"d", b"a")] == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    torch.save(d.state_dict(), tmp_path / "d.pt")
    back = Deduper(window=3)
    back.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    assert back.seen(b"d") and back.seen(b"a") and not back.seen(b"b")
    assert not Deduper(window=0).seen(b"a") and not Deduper(window=0).seen(b"a")


def test_merging_replicas_ledgers_counts_an_offset_both_applied():
    from stream_trainer.pipeline.ledger import OffsetLedger

    base, a, b = OffsetLedger(), OffsetLedger(), OffsetLedger()
    base.add_range(("t", 0), 0, 100)
    a.add_range(("t", 0), 100, 150)  # replica a, partition 0
    b.add_range(("t", 1), 0, 80)  # replica b, partition 1
    base.merge(a)
    base.merge(b)
    assert base.ranges(("t", 0)) == [(0, 150)] and base.ranges(("t", 1)) == [(0, 80)]
    assert base.duplicates == 0
    again = OffsetLedger()
    again.add_range(("t", 0), 140, 160)  # a partition moved, and 10 events were relearned
    base.merge(again)
    assert base.ranges(("t", 0)) == [(0, 160)] and base.duplicates == 10


def test_a_partition_whose_log_went_back_forgets_its_duplicate_window(tmp_path):
    import torch

    d = Deduper(window=10)
    assert not d.seen(b"a", ("t", 0)) and not d.seen(b"b", ("t", 1))
    assert d.seen(b"a", ("t", 1))  # the window spans partitions: a replay elsewhere is caught
    torch.save(d.state_dict(), tmp_path / "d.pt")
    back = Deduper(window=10)
    back.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    assert back.forget(("t", 0)) == 1  # the partition's own digests only, across a restore
    assert not back.seen(b"a", ("t", 0)) and back.seen(b"b", ("t", 0))
    old = {"hash": "xxh3_64", "window": 10, "digests": d.state_dict()["digests"]}
    back.load_state_dict(old)  # before partitions were kept: any reset forgets them
    assert back.seen(b"b") and back.forget(("t", 5)) == 2 and not back.seen(b"b")
    older = {"window": 10, "digests": d.state_dict()["digests"]}  # blake2b digests
    back.load_state_dict(older)  # never match the xxh3 digests of now: the window restarts
    assert not back.seen(b"b") and len(back.state_dict()["digests"]) == 1
