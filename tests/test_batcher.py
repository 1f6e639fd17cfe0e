from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stream_trainer.pipeline.batcher import MicroBatcher

ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 20)),
        st.tuples(st.just("tick"), st.floats(0, 0.1)),
        st.tuples(st.just("take"), st.just(0)),
    ),
    max_size=60,
)


@given(ops, st.integers(1, 16), st.floats(0, 0.05))
def test_never_drops_duplicates_or_reorders(script, max_size, latency):
    now = [0.0]
    b: MicroBatcher[int] = MicroBatcher(max_size, latency, clock=lambda: now[0])
    sent, got = 0, []
    for op, arg in script:
        if op == "add":
            for _ in range(arg):
                b.add(sent)
                sent += 1
        elif op == "tick":
            now[0] += arg
        else:
            while b.ready():
                batch = b.take()
                assert 1 <= len(batch) <= max_size
                got.extend(batch)
    while len(b):
        got.extend(b.take())
    assert got == list(range(sent))


def test_latency_bound_releases_a_partial_batch():
    now = [0.0]
    b: MicroBatcher[str] = MicroBatcher(100, 0.05, clock=lambda: now[0])
    assert b.time_left() is None and not b.ready()
    b.add("x")
    assert b.time_left() == 0.05 and not b.ready()
    now[0] = 0.049
    assert not b.ready()
    now[0] = 0.05
    assert b.ready() and b.take() == ["x"]


def test_discard_removes_the_selected_items_and_keeps_the_order_of_the_rest():
    from stream_trainer.pipeline.batcher import MicroBatcher

    t = [0.0]
    b = MicroBatcher(max_size=10, max_latency_s=1.0, clock=lambda: t[0])
    b.extend([("p0", 1), ("p1", 2), ("p0", 3)])
    t[0] = 0.5
    b.add(("p1", 4))
    assert b.discard(lambda it: it[0] == "p0") == 2
    assert len(b) == 2 and abs(b.time_left() - 0.5) < 1e-9  # the oldest left is from t=0
    assert b.take() == [("p1", 2), ("p1", 4)]
