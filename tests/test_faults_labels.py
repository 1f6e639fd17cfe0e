"""Delayed labels across kill -9 (real broker, the daemon as a subprocess).

Every impression ends exactly once: trained with its label, trained as a negative, or
dropped (two pipelines on the same topics, one per ``on_expiry``). The proof is the
record the checkpoint keeps, not the metrics (which restart at zero): the ledger of both
topics' offsets, the joiner's resolved request ids (labelled or expired) and pending
ones, its outcome counts and the trained counter, all saved together.
"""

from __future__ import annotations

import json
import random
import signal
import time
from itertools import pairwise
from pathlib import Path

import pytest
from support import (
    Daemon,
    Trickle,
    base_config,
    consume_all,
    ledger_ranges,
    newest_checkpoint,
    sample,
)

from stream_trainer.edges.admin import create_topics
from stream_trainer.producers import make_generator
from stream_trainer.producers.delayed import IMPRESSION, delayed_labels
from stream_trainer.producers.publish import Aside

pytestmark = pytest.mark.integration

N = 20_000  # impressions: 1,000 s of event time (the click stream's ts advance 0.05 s each)
WINDOW_S = 20.0  # event time; delays run 1..60 s, so ~5% of the clicks come late
PIPES = {"joined-neg": "negative", "joined-drop": "drop"}


def joined(name: str, topic: str, labels: str, on_expiry: str) -> dict:
    return {"name": name, "kind": "clicks", "topics": [topic],
            "labels": {"topic": labels, "window_s": WINDOW_S, "on_expiry": on_expiry}}  # fmt: skip


def expected_ends(imp_ts: dict, lab_ts: dict, watermark: float) -> dict[str, set[str]]:
    """Request ids by how they must end, from the produced streams alone: a label within
    the window joins (and its impression is trained once its window has passed, event
    time being the slowest partition's newest ts: until then it is held); one beyond it
    is late (its impression expires); an impression with no label expires once event
    time passes its window, and waits otherwise."""
    labelled = {r for r, ts in lab_ts.items() if not ts - imp_ts[r] > WINDOW_S}
    late = set(lab_ts) - labelled
    cutoff = watermark - WINDOW_S
    unlabelled = {r for r, ts in imp_ts.items() if r not in lab_ts and ts < cutoff}
    expired = late | unlabelled
    held = {r for r in labelled if imp_ts[r] >= cutoff}
    return {"labelled": labelled, "late": late, "expired": expired, "held": held,
            "pending": set(imp_ts) - labelled - expired}  # fmt: skip


def saved_offsets(root: Path, name: str) -> dict[str, int]:
    """The next offsets in the pipeline's newest checkpoint ({} while there is none)."""
    try:
        return dict(newest_checkpoint(root, name)["offsets"])
    except (IndexError, OSError):  # none yet, or replaced by a newer one as it was read
        return {}


def lags(m: dict, name: str, topic: str, labels: str) -> list:
    return [sample(m, "stream_trainer_consumer_lag", pipeline=name, topic=t, partition=str(q))
            for t, q in ((topic, 0), (topic, 1), (labels, 0))]  # fmt: skip


@pytest.mark.parametrize("kills", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_kill_9_joined_pipelines_end_every_impression_exactly_once(
    broker, topic, workdir, metrics_port, kills
):
    bs = broker.bootstrap
    labels = f"{topic}.labels"
    create_topics(bs, {topic: 2, labels: 1})  # one labels partition: its ts only increase
    stream = list(delayed_labels(make_generator("clicks", seed=31, count=N), seed=31,
                                 max_delay_s=60.0))  # fmt: skip
    imp_ts = {d["request_id"]: d["ts"] for k, d in stream if k == IMPRESSION}
    lab_ts = {d["request_id"]: d["ts"] for k, d in stream if k != IMPRESSION}
    events = [d if k == IMPRESSION else Aside(labels, d, "request_id") for k, d in stream]
    # parts, in order: one arriving while each daemon runs (killed `kills` times), the last
    # while the final one catches up; a part (5,000+ impressions) takes 3.3 s or more,
    # longer than a daemon is let run, and its rest arrives while the next one starts
    cuts = [len(events) * i // (kills + 1) for i in range(kills + 2)]
    parts = [Trickle(bs, topic, events[a:b], "user_id", rate=1500) for a, b in pairwise(cuts)]
    pipes = [joined(name, topic, labels, how) for name, how in PIPES.items()]
    cfg = base_config(bs, workdir / "ckpt", pipes)
    cfg["checkpoint"]["every_seconds"] = 1.0
    rnd = random.Random(11)
    mid_stream = []
    d = None
    try:
        for i, part in enumerate(parts):
            d = Daemon(cfg, workdir, metrics_port).start()
            d.wait_for(  # (the first daemon reads every partition from its first record)
                lambda m: all(None not in lags(m, name, topic, labels) for name in PIPES),
                what="both pipelines reading their 3 partitions",
            )
            if i:
                parts[i - 1].join()  # (its rest arrived while no daemon ran, or starting)
            part.start()
            if part is parts[-1]:
                break
            time.sleep(rnd.uniform(0.2, 2.5))  # a random point mid-stream
            mid_stream.append(part.is_alive())
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
        parts[-1].join()
        assert sum(part.sent for part in parts) == N
        imps = consume_all(bs, topic, N, timeout_s=10)
        labs = consume_all(bs, labels, len(lab_ts), timeout_s=10)
        assert len(imps) == N and len(labs) == len(lab_ts)  # no retried copies
        sizes = {f"{topic}:{q}": sum(r.partition == q for r in imps) for q in (0, 1)}
        sizes[f"{labels}:0"] = len(labs)
        d.wait_for(  # (not the lag metric: it may predate the last records)
            lambda m: all(saved_offsets(workdir / "ckpt", name) == sizes for name in PIPES),
            what="a checkpoint of every record, after the kills",
        )
        assert d.terminate() == 0, d.log()[-3000:]
    finally:
        if d is not None:
            d.kill()
    assert mid_stream == [True] * kills  # each kill while events were arriving
    # event time at the end: the slowest partition's newest ts
    newest = [max(json.loads(r.value)["ts"] for r in imps if r.partition == q) for q in (0, 1)]
    want = expected_ends(imp_ts, lab_ts, min(*newest, max(lab_ts.values())))
    assert all(want.values())  # every way to end occurs (and some impressions still wait)

    for name, how in PIPES.items():
        state = newest_checkpoint(workdir / "ckpt", name)
        # every record of both topics applied once: no gap, no overlap
        assert ledger_ranges(state) == {tp: [(0, n)] for tp, n in sizes.items()}, name
        assert state["ledger"]["duplicates"] == 0
        j = state["joiner"]
        done = dict(zip(j["done_ids"], j["done_labelled"].tolist(), strict=True))
        # each impression ended once, as the streams say it must, or still waits
        assert {r for r, lab in done.items() if lab} == want["labelled"], name
        assert {r for r, lab in done.items() if not lab} == want["expired"], name
        assert set(j["pending_ids"]) == want["pending"] | want["held"], name
        labels = dict(zip(j["pending_ids"], j["pending_labels"].tolist(), strict=True))
        assert {r for r, lab in labels.items() if lab >= 0} == want["held"], name
        c = j["counts"]
        expired, other = ("negative", "dropped") if how == "negative" else ("dropped", "negative")
        assert c["labelled"] == len(want["labelled"]) and c[expired] == len(want["expired"])
        assert c["labelled"] + c[expired] == len(done) and c[other] == 0  # none ended twice
        assert c["late"] == len(want["late"]), name
        assert c["duplicate"] == c["orphaned"] == c["bad"] == c["evicted"] == 0, name
        counters = state["counters"]
        ended = c["labelled"] - len(want["held"])  # labelled and trained at the window's end
        trained = ended + (c["negative"] if how == "negative" else 0)
        assert counters["trained"] == trained, name  # each example that ended trained once
        assert counters["rejected"] == counters["seeded"] == 0, name
