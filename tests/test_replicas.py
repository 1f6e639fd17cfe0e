"""Replicas under torchrun (gloo on loopback) against the real broker, 4 partitions."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pytest
from support import (
    Daemon,
    Torchrun,
    Trickle,
    base_config,
    ledger_ranges,
    newest_checkpoint,
    produce,
)

from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import free_port
from stream_trainer.metrics.scrape import sample, scrape
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration

PARTITIONS = 4


def own_group(cfg: dict, name: str) -> dict:
    """A consumer group of the test's own: on the local Tansu broker, members of a group
    that all stopped together leave it unable to assign partitions to new members for
    minutes, and every test's daemons would otherwise share `stream-trainer.<pipeline>`."""
    return {**cfg, "kafka": {**cfg["kafka"], "group_prefix": f"stream-trainer-{name}"}}


def clicks_config(bootstrap: str, workdir: Path, topic: str, mode: str = "allreduce") -> dict:
    cfg = base_config(
        bootstrap,
        workdir / "ckpt",
        [
            {
                "name": "clicks",
                "kind": "clicks",
                "topics": [topic],
                "drift": {"actions": ["reset_optimizer"]},
                "sync": {"mode": mode, "check_every": 1},
            }
        ],
        stall_timeout_s=20,
    )
    return own_group(cfg, topic)


def metric(d: Daemon, name: str, rank: int = 0, **labels: str) -> float:
    """The clicks pipeline's ``name`` on replica ``rank`` of ``d`` (0 while it does not
    answer: starting, or restarted by torchrun on a port of its own)."""
    try:
        address = d.address_of(rank)
        return sample(scrape(f"http://{address}/metrics"), name, pipeline="clicks", **labels) or 0
    except OSError:
        return 0.0


def wait(predicate, timeout_s: float, what: str, logs=()) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(d.log()[-2500:] for d in logs)
    raise AssertionError(f"timed out: {what}\n{tails}")


def covered_exactly_once(workdir: Path, counts: dict[int, int]) -> None:
    state = newest_checkpoint(workdir / "ckpt", "clicks")
    ranges = ledger_ranges(state)
    topic = next(iter(state["offsets"])).rpartition(":")[0]
    assert ranges == {f"{topic}:{p}": [(0, n)] for p, n in counts.items() if n}, ranges
    assert state["ledger"]["duplicates"] == 0
    assert state["offsets"] == {f"{topic}:{p}": n for p, n in counts.items() if n}


def checkpointed(workdir: Path) -> int:
    """Events the newest checkpoint's model has learned (its next offsets, summed)."""
    try:
        return sum(newest_checkpoint(workdir / "ckpt", "clicks")["offsets"].values())
    except (IndexError, OSError, RuntimeError, EOFError):
        return 0


def per_partition(events: list[dict], key: str = "user_id") -> dict[int, int]:
    """How many of ``events`` land on each partition (the producer's key hashing)."""
    from kafka.partitioner.default import murmur2

    counts = dict.fromkeys(range(PARTITIONS), 0)
    for e in events:
        h = murmur2(str(e[key]).encode()) & 0x7FFFFFFF
        counts[h % PARTITIONS] += 1
    return counts


@pytest.mark.parametrize("mode", ["allreduce", "average"])
def test_two_replicas_train_one_model_in_sync_and_learn_every_offset_once(
    broker, topic, workdir, mode
):
    bs = broker.bootstrap
    create_topics(bs, {topic: PARTITIONS})
    events = list(make_generator("clicks", seed=1, count=12_000))
    produce(bs, topic, events, key_field="user_id")
    t = Torchrun(clicks_config(bs, workdir, topic, mode), workdir, nproc=2).start()
    try:
        wait(
            lambda: (
                metric(t, "stream_trainer_events_trained_total", 0)
                + metric(t, "stream_trainer_events_trained_total", 1)
                == len(events)
            ),
            120,
            "both replicas trained everything",
            [t],
        )
        for r in (0, 1):  # both trained, on two partitions each
            assert metric(t, "stream_trainer_events_trained_total", r) > 0
            assert metric(t, "stream_trainer_assigned_partitions", r) == 2
        # the weights were compared across the replicas: after every round (allreduce)
        # or every averaging (average), and never differed
        for r in (0, 1):
            assert metric(t, "stream_trainer_sync_checks_total", r, result="equal") > 0
            assert metric(t, "stream_trainer_sync_checks_total", r, result="different") == 0
        kinds = ("round", "gradients") if mode == "allreduce" else ("round", "average")
        for kind in kinds:
            assert metric(t, "stream_trainer_sync_duration_seconds_count", kind=kind) > 0
    finally:
        t.terminate(60)  # every replica exits 0: the final checkpoint was written
    covered_exactly_once(workdir, per_partition(events))
    # torchrun stops a replica by signalling its process group (its ingest workers too):
    # as quiet a stop as one of the daemon alone (no worker died and was started again
    # while the other replica waited in the last round)
    log = t.log()
    assert "ingest worker died" not in log, log[-5000:]
    assert re.findall(r"^\S+ error .*$", log, re.M) == [], log[-5000:]
    # each replica fetched and decoded in ingest workers of its own (auto)
    started = [line for line in t.log().splitlines() if "ingest workers started" in line]
    assert len(started) >= 2, t.log()[-3000:]


def elastic(broker, topic: str, workdir: Path, seed: int):
    """30k click events, the first 5k produced, the rest to trickle in (1,500/s); two
    torchrun agents of one elastic group (the first started, hosting the rendezvous)."""
    bs = broker.bootstrap
    create_topics(bs, {topic: PARTITIONS})
    events = list(make_generator("clicks", seed=seed, count=30_000))
    produce(bs, topic, events[:5000], key_field="user_id")
    rdzv = f"127.0.0.1:{free_port()}"
    cfg = clicks_config(bs, workdir, topic)
    first = Torchrun(cfg, workdir, rdzv=rdzv, name="a").start()
    second = Torchrun(cfg, workdir, rdzv=rdzv, name="b")
    trickle = Trickle(bs, topic, events[5000:], "user_id", rate=1500)
    return events, first, second, trickle


def hosting(rdzv: str) -> bool:
    """The first agent hosts the rendezvous store: its port takes connections."""
    host, _, port = rdzv.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_killed_replica_s_partitions_are_taken_over_exactly_once(broker, topic, workdir):
    events, first, second, trickle = elastic(broker, topic, workdir, seed=2)
    wait(lambda: hosting(first.rdzv), 60, "the first agent hosts the rendezvous", [first])
    second.start()
    try:
        wait(
            lambda: (
                metric(first, "stream_trainer_assigned_partitions") == 2
                and metric(second, "stream_trainer_events_trained_total") > 0
            ),
            120,
            "two replicas training",
            [first, second],
        )
        trickle.start()
        # mid-stream: a checkpoint of the two holds part of the trickle, the rest is to come
        wait(lambda: checkpointed(workdir) > 5000, 90, "the trickle checkpointed", [first])
        second.kill()
        killed_at = time.monotonic()
        # the survivor names the stalled rank, regroups alone, and takes all partitions
        wait(
            lambda: metric(first, "stream_trainer_assigned_partitions") == PARTITIONS,
            90,
            "the survivor holds every partition",
            [first],
        )
        took_over_s = time.monotonic() - killed_at
        trickle.join()
        wait(lambda: checkpointed(workdir) == len(events), 90, "everything checkpointed", [first])
        log = first.log()
        assert "replica sync failed" in log and "did not complete" in log, log[-3000:]
        # detection is at once (the peer's socket closes); the rest is torchrun restarting
        # the survivor (rendezvous, start-up, restore) and the group rebalancing. A time,
        # not asserted (speed belongs in benchmarks): `pytest tests/test_replicas.py -k
        # killed -s` prints it (docs/how-to/scaling-out.md quotes it).
        print(f"\nthe survivor held every partition {took_over_s:.1f} s after the kill")
    finally:
        second.kill()
        first.terminate(60)
    covered_exactly_once(workdir, per_partition(events))


def test_a_replica_joining_mid_stream_loses_and_repeats_nothing(broker, topic, workdir):
    """The second replica joins while events trickle in; the last 5k events wait until
    both hold their partitions, so that the newcomer has work however long it took to
    join (on a loaded machine the trickle had ended first, and the first replica had
    trained everything: nothing was left for the newcomer to train)."""
    events, first, second, _ = elastic(broker, topic, workdir, seed=3)
    held = 5000
    trickle = Trickle(broker.bootstrap, topic, events[5000:-held], "user_id", rate=1500)
    try:
        wait(
            lambda: metric(first, "stream_trainer_assigned_partitions") == PARTITIONS,
            120,
            "one replica with every partition",
            [first],
        )
        trickle.start()
        # the second joins while the first trains the trickle
        wait(
            lambda: metric(first, "stream_trainer_events_trained_total") > 6000,
            90,
            "the first replica trains the trickle",
            [first],
        )
        second.start()
        wait(
            lambda: (
                metric(first, "stream_trainer_assigned_partitions") == 2
                and metric(second, "stream_trainer_assigned_partitions") == 2
            ),
            120,
            "two replicas, two partitions each",
            [first, second],
        )
        trickle.join()
        produce(broker.bootstrap, topic, events[-held:], key_field="user_id")
        wait(
            lambda: metric(second, "stream_trainer_events_trained_total") > 0,
            90,
            "the newcomer trains",
            [first, second],
        )
        wait(
            lambda: checkpointed(workdir) == len(events),
            90,
            "everything checkpointed",
            [first, second],
        )
    finally:
        for d in (second, first):  # SIGTERM to both: they stop together, checkpointed
            d.send_stop()
        for d in (second, first):
            d.wait_stopped(60)
    covered_exactly_once(workdir, per_partition(events))


def test_by_key_each_key_s_model_lives_on_one_replica_and_survives_a_restart(
    broker, topic, workdir
):
    """3 symbols on 2 replicas (no sync: two plain daemons in one consumer group)."""
    bs = broker.bootstrap
    create_topics(bs, {topic: PARTITIONS})
    events = list(make_generator("ticks", seed=4, count=9_000, n_symbols=3))
    produce(bs, topic, events[:6_000], key_field="symbol")
    cfg = base_config(
        bs,
        workdir / "ckpt",
        [
            {
                "name": "ticks",
                "kind": "ticks",
                "topics": [topic],
                "partitioning": "by_key",
                "max_models": 2,
                "drift": {"actions": ["reset_optimizer"]},
            }
        ],
    )
    cfg = own_group(cfg, topic)
    shards = workdir / "ckpt" / "ticks" / "shards"

    def manifests() -> dict[str, tuple[list[str], list[int]]]:
        """{shard: (keys, their models' updates)} from each shard's newest checkpoint."""
        out = {}
        for d in sorted(shards.iterdir()) if shards.is_dir() else []:
            files = sorted(d.glob("ckpt-*.pt"))
            if files:
                doc = __import__("torch").load(files[-1], weights_only=True)
                out[d.name] = (list(doc["learner"]["keys"]), doc["learner"]["updates"].tolist())
        return out

    def keyed_models(d: Daemon) -> float:
        return metric_of(d, "stream_trainer_keyed_models", "ticks")

    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    a = Daemon(cfg, workdir / "a").start()
    b = Daemon(cfg, workdir / "b").start()
    try:
        wait(
            lambda: metric_of(a, "stream_trainer_assigned_partitions", "ticks") == 2
            and metric_of(b, "stream_trainer_assigned_partitions", "ticks") == 2,
            120, "two partitions each", [a, b],
        )  # fmt: skip
        wait(lambda: sum(map(len, (m[0] for m in manifests().values()))) == 3, 90,
             "the 3 keys checkpointed", [a, b])  # fmt: skip
        first = manifests()
        keys = [k for ks, _ in first.values() for k in ks]
        assert sorted(keys) == ["SYM0", "SYM1", "SYM2"]  # each key in exactly one shard
        # and each replica holds the models of its own shards only: 3 between them
        wait(lambda: keyed_models(a) + keyed_models(b) == 3, 30, "3 models held", [a, b])
        before = {k: u for ks, us in first.values() for k, u in zip(ks, us, strict=True)}
    finally:
        a.send_stop()
        b.send_stop()
        a.wait_stopped(60)
        b.wait_stopped(60)
    # restart both, more events: every key's model continues from its checkpoint. (A new
    # consumer group, see own_group; by_key shards resume from their checkpoints, not
    # from group commits.)
    produce(bs, topic, events[6_000:], key_field="symbol")
    cfg = own_group(cfg, f"{topic}-restarted")
    a = Daemon(cfg, workdir / "a").start()
    b = Daemon(cfg, workdir / "b").start()
    try:
        wait(
            lambda: sum(
                sum(newest_offsets(d) for d in [shards / s]) for s in manifests()
            ) == len(events),
            120, "everything checkpointed after the restart", [a, b],
        )  # fmt: skip
    finally:
        a.send_stop()
        b.send_stop()
        a.wait_stopped(60)
        b.wait_stopped(60)
    for path in workdir.rglob("daemon-*.log"):  # both runs': rebalances checkpoint the
        text = path.read_text(errors="replace")  # leaving shards without a failing callback
        assert "revoke failed" not in text and "callback throws" not in text, text[-3000:]
    after = {k: u for ks, us in manifests().values() for k, u in zip(ks, us, strict=True)}
    assert sorted(after) == ["SYM0", "SYM1", "SYM2"]
    for k in after:  # the models learned on (a fresh model would have fewer updates)
        assert after[k] > before[k], (k, before[k], after[k])
    for d in sorted(shards.iterdir()):
        ranges = {key: r for key, r in ledger_ranges(newest(d)).items() if r}
        for key, r in ranges.items():
            assert len(r) == 1 and r[0][0] == 0, (key, r)  # every offset once, in one shard
        assert newest(d)["ledger"]["duplicates"] == 0


def newest(d: Path) -> dict:
    import torch

    return torch.load(sorted(d.glob("ckpt-*.pt"))[-1], weights_only=True)


def newest_offsets(d: Path) -> int:
    try:
        return sum(newest(d)["offsets"].values())
    except (IndexError, OSError, RuntimeError, EOFError):
        return 0


def metric_of(d, name: str, pipeline: str) -> float:
    try:
        return sample(scrape(f"http://{d.address}/metrics"), name, pipeline=pipeline) or 0
    except OSError:
        return 0.0
