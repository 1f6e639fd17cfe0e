"""`make bench-replicas`: what replicas sync, how fast, and how well they learn.

In-process (no broker, load-independent where it says so): the daemon's default clicks
pipeline (``ReplicatedPipeline``, gloo on loopback) is fed one click stream keyed onto
4 partitions, each replica its partitions' polls, for 1, 2 and 4 replicas, both sync
modes, embeddings synced as rows (``sync.sparse: true``, the default) and as whole
densified tables (``false``, as before). Reported: the payload bytes a replica puts
into one gradient sync (allreduce) or one averaging (average) — a count of tensor
bytes, independent of the machine's load —, the median time of that collective,
events/s, and the prequential log loss over the whole stream (every replica's events).

Then the daemon (unless ``--no-daemon``): a local broker, one click topic of 4
partitions holding ``--events`` events; then, for each setting, a fresh consumer
group and checkpoint directory, and ``torchrun --standalone --nproc-per-node N -m
stream_trainer run``. The rate is the events trained (summed over the replicas'
metrics) from the moment every replica holds its partitions to the last, over that
time, median of ``--repeats`` runs: the consumer group hands the first replica every
partition and the second its share only a rebalance later (seconds), and until then
one replica trains alone.
Reported, not asserted: on a 2-core machine the replicas share the cores with the
broker (and, here, with other work: throughput ratios need a quiet machine).

    .venv/bin/python scripts/bench_replicas.py [--events 150000] [--repeats 3]
        [--inproc-events 40000] [--replicas 1,2,4] [--no-daemon] [--out BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import itertools
import json
import math
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from bench_gpu import write_section

from stream_trainer.distributed import Replicas, World
from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import per_pipeline, scrape
from stream_trainer.pipeline.core import Pipeline
from stream_trainer.pipeline.hooks import NullHooks
from stream_trainer.pipeline.ports import Record
from stream_trainer.pipeline.replicated import ReplicatedPipeline
from stream_trainer.producers import make_generator
from stream_trainer.producers.publish import publish

START, END = "<!-- replicas:start -->", "<!-- replicas:end -->"
SETTINGS = [(1, "-"), (2, "allreduce"), (2, "average")]
PARTITIONS = 4


def trained(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        try:
            total += per_pipeline(
                scrape(f"http://127.0.0.1:{port}/metrics"), "stream_trainer_events_trained_total"
            ).get("clicks", 0.0)
        except (OSError, http.client.HTTPException):  # not serving yet: a connect to a
            pass  # free local port can even meet itself (BadStatusLine: our own request)
    return total


def assigned(ports: list[int]) -> list[float]:
    """Partitions each replica holds (0 where it does not answer yet)."""
    out = []
    for port in ports:
        try:
            out.append(
                per_pipeline(
                    scrape(f"http://127.0.0.1:{port}/metrics"), "stream_trainer_assigned_partitions"
                ).get("clicks", 0.0)
            )
        except (OSError, http.client.HTTPException):  # see trained()
            out.append(0.0)
    return out


def wait_group(ports: list[int], proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    """Until every replica holds partitions and they hold all of them, twice in a row
    half a second apart (a rebalance may still move them)."""
    deadline, ok = time.monotonic() + timeout_s, 0
    while ok < 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(
                f"bench-replicas: the group did not form (partitions per replica "
                f"{assigned(ports)}, torchrun exit {proc.poll()})"
            )
        held = assigned(ports)
        ok = ok + 1 if min(held) > 0 and sum(held) == PARTITIONS else 0
        time.sleep(0.5)


def free_ports(n: int) -> int:
    """A port where ``n`` consecutive ports are free (replica r serves metrics on port +
    r; a port of the last run's replicas may still be held while they exit)."""
    while True:
        port = free_port()
        try:
            for p in range(port, port + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def one_run(
    bootstrap: str,
    topic: str,
    n: int,
    nproc: int,
    mode: str,
    sparse: bool,
    work: Path,
    ingest: int | str = "auto",
) -> float:
    port = free_ports(nproc)
    cfg = {
        "kafka": {"bootstrap_servers": bootstrap, "group_prefix": f"bench-{time.time_ns()}"},
        "device": "cpu",
        "ingest": {"workers": ingest},
        "metrics": {"address": f"127.0.0.1:{port}"},
        "checkpoint": {"dir": str(work / f"ckpt-{time.time_ns()}"), "every_seconds": 5.0},
        "pipelines": [{"name": "clicks", "kind": "clicks", "topics": [topic],
                       "drift": {"actions": ["reset_optimizer"]},
                       "sync": {"mode": mode if mode != "-" else "allreduce",
                                "sparse": sparse}}],
    }  # fmt: skip
    path = work / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = open(work / f"run-{nproc}-{mode}.log", "wb")  # noqa: SIM115
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
         "--nproc-per-node", str(nproc), "-m", "stream_trainer", "run", "--config", str(path)],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    ports = [port + r for r in range(nproc)]
    first = last = None
    seen = 0.0
    try:
        wait_group(ports, proc)  # the first replica may have trained alone until now
        first = (time.monotonic(), trained(ports))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            now, seen = time.monotonic(), trained(ports)
            if seen >= n:
                last = now
                break
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(60)
    if first is None or last is None:
        raise SystemExit(
            f"bench-replicas: run {nproc} x {mode} trained {seen} of {n}; see {log.name}"
        )
    t0, done = first
    if n - done < n / 10:
        raise SystemExit(
            f"bench-replicas: run {nproc} x {mode} had trained {done:,.0f} of {n:,} events "
            "before the group formed: more --events, for a backlog to measure"
        )
    return (n - done) / max(last - t0, 1e-9)


# ---- in-process: the pipeline itself on the same stream, no broker ------------------------
INPROC_EVENTS = 40_000
POLL = 500  # records per poll, like kafka-python's max_poll_records


def _partitioned(n: int) -> list[list[Record]]:
    """The click stream as Kafka would hold it: keyed by user_id onto PARTITIONS."""
    from kafka.partitioner.default import murmur2

    parts: list[list[Record]] = [[] for _ in range(PARTITIONS)]
    for e in make_generator("clicks", seed=0, count=n):
        p = (murmur2(str(e["user_id"]).encode()) & 0x7FFFFFFF) % PARTITIONS
        parts[p].append(Record("bench", p, len(parts[p]), 0, None, json.dumps(e).encode()))
    return parts


def _polls(parts: list[list[Record]], rank: int, world: int) -> list[list[Record]]:
    """This rank's partitions (Kafka's range assignment), interleaved, in polls."""
    mine = [parts[p] for p in range(PARTITIONS) if p * world // PARTITIONS == rank]
    merged = [r for recs in itertools.zip_longest(*mine) for r in recs if r is not None]
    return [merged[i : i + POLL] for i in range(0, len(merged), POLL)]


class _Losses(NullHooks):
    """Prequential loss summed over the events trained; time in each collective."""

    def __init__(self) -> None:
        self.loss, self.n = 0.0, 0
        self.syncs: dict[str, list[float]] = {}

    def on_batch(self, *, trained: int, batch_loss: float, skipped: Any = None, **_: Any) -> None:
        if not skipped:
            self.loss += batch_loss * trained
            self.n += trained

    def on_sync(self, kind: str, seconds: float) -> None:
        self.syncs.setdefault(kind, []).append(seconds)


def _settings(mode: str, sparse: bool, ckpt: str) -> Any:
    from stream_trainer.config import parse_settings

    return parse_settings({
        "checkpoint": {"dir": ckpt, "every_seconds": 1e9}, "device": "cpu",
        "pipelines": [{"name": "clicks", "kind": "clicks", "topics": ["bench"],
                       "sync": {"mode": mode, "sparse": sparse, "check_every": 0}}],
    })  # fmt: skip


def _rank(rank: int, world: int, port: int, out: dict, mode: str, sparse: bool, n: int) -> None:
    """One replica of the daemon's default clicks pipeline, fed its partitions' polls;
    when done it idles in rounds until every rank is done, then all stop together."""
    torch.set_num_threads(1)
    parts = _partitioned(n)
    hooks = _Losses()
    with tempfile.TemporaryDirectory() as ckpt:
        s = _settings(mode, sparse, ckpt)
        if world == 1:
            p: Any = Pipeline(s, s.pipelines[0], hooks=hooks)
            t0 = time.perf_counter()
            for recs in _polls(parts, 0, 1):
                p.step(recs, False)
            p.flush()
            out[rank] = {
                "seconds": time.perf_counter() - t0,
                "loss": hooks.loss,
                "n": hooks.n,
                "sent": {},
                "syncs": {},
                "rounds": 0,
                "steps": p.learner.updates,
            }
            return  # fmt: skip
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
        try:
            p = ReplicatedPipeline(s, s.pipelines[0], hooks=hooks)
            rep = Replicas(World(rank, world), "clicks", torch.device("cpu"),
                           stall_timeout_s=600, on_sync=hooks.on_sync)  # fmt: skip
            p.attach(rep)
            dist.barrier()
            t0 = time.perf_counter()
            for recs in _polls(parts, rank, world):
                if not p.step(recs, False):
                    break
            else:
                out[f"done{rank}"] = True
                while not all(out.get(f"done{r}") for r in range(world)):
                    time.sleep(p.poll_timeout(0.01))  # an empty poll's wait
                    if not p.step([], False):
                        break
                else:
                    p.step([], True)
            seconds = time.perf_counter() - t0
            out[rank] = {"seconds": seconds, "loss": hooks.loss, "n": hooks.n,
                         "sent": dict(rep.sent_bytes), "syncs": hooks.syncs,
                         "rounds": p._rounds, "steps": p.learner.updates}  # fmt: skip
        finally:
            dist.destroy_process_group()


def inprocess(world: int, mode: str, sparse: bool, n: int) -> dict[str, Any]:
    """Events/s, prequential log loss, and the collectives of one run in-process."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        out = manager.dict()
        port = free_port()
        procs = [ctx.Process(target=_rank, args=(r, world, port, out, mode, sparse, n))
                 for r in range(world)]  # fmt: skip
        for pr in procs:
            pr.start()
        for pr in procs:
            pr.join()
        if any(pr.exitcode for pr in procs):
            raise SystemExit(f"bench-replicas: in-process {world} x {mode} failed")
        ranks = [dict(out[r]) for r in range(world)]
    r0 = ranks[0]
    syncs = "gradients" if mode == "allreduce" else "average"
    per = r0["syncs"].get(syncs, [])
    return {
        "events_s": sum(r["n"] for r in ranks) / max(r["seconds"] for r in ranks),
        "log_loss": sum(r["loss"] for r in ranks) / max(1, sum(r["n"] for r in ranks)),
        "sync_rounds": len(per),
        "bytes_per_sync": r0["sent"].get(syncs, 0) / max(1, len(per)),
        "ms_per_sync": 1000 * statistics.median(per) if per else math.nan,
        "round_bytes": r0["sent"].get("round", 0) / max(1, r0["rounds"]),
        "rounds": r0["rounds"],
    }


@contextlib.contextmanager
def click_topic(n: int) -> Iterator[tuple[str, str, Path]]:
    """A local broker holding ``n`` click events on one topic of ``PARTITIONS``
    partitions: (bootstrap, topic, a work folder), all gone afterwards."""
    broker = LocalBroker(port=free_port())
    broker.start()
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    try:
        topic = "bench-clicks"
        create_topics(broker.bootstrap, {topic: PARTITIONS})
        events = list(make_generator("clicks", seed=0, count=n))
        publish(broker.bootstrap, topic, events, key_field="user_id", progress=False)
        yield broker.bootstrap, topic, work
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def daemon_rows(a: argparse.Namespace, settings: list[tuple[int, str, bool]]) -> list[Any]:
    rows = []
    with click_topic(a.events) as (bootstrap, topic, work):
        for nproc, mode, sparse in settings:
            rates = []
            for k in range(a.repeats):
                rates.append(
                    one_run(bootstrap, topic, a.events, nproc, mode, sparse, work,
                            ingest=a.ingest_workers)
                )  # fmt: skip
                print(f"bench-replicas: daemon {nproc} x {mode} sparse={sparse}: run {k + 1}: "
                      f"{rates[-1]:,.0f} events/s", file=sys.stderr)  # fmt: skip
            rows.append((nproc, mode, sparse, statistics.median(rates), min(rates), max(rates)))
    return rows


def _emb(sparse: bool) -> str:
    return "rows" if sparse else "whole tables"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000, help="daemon runs")
    ap.add_argument("--repeats", type=int, default=3, help="daemon runs")
    ap.add_argument("--inproc-events", type=int, default=INPROC_EVENTS)
    ap.add_argument("--replicas", default="1,2,4", help="comma-separated replica counts")
    ap.add_argument("--no-daemon", action="store_true", help="in-process runs only")
    ap.add_argument(
        "--ingest-workers", default="auto", type=lambda v: v if v == "auto" else int(v),
        help="the daemons' ingest.workers (default auto)",
    )  # fmt: skip
    ap.add_argument("--out", help="replace the replicas section of this markdown file")
    a = ap.parse_args()
    worlds = [int(x) for x in a.replicas.split(",")]
    settings = [(1, "-", True)] + [
        (w, mode, sparse)
        for w in worlds
        if w > 1
        for mode in ("allreduce", "average")
        for sparse in (True, False)
    ]
    inproc = []
    for w, mode, sparse in settings:
        r = inprocess(w, mode if mode != "-" else "allreduce", sparse, a.inproc_events)
        inproc.append((w, mode, sparse, r))
        print(f"bench-replicas: in-process {w} x {mode} {_emb(sparse)}: {r}", file=sys.stderr)
    drows = [] if a.no_daemon else daemon_rows(a, settings)
    base = inproc[0][3]
    lines = [
        START,
        "## Replicas (torchrun)",
        "",
        f"`scripts/bench_replicas.py --inproc-events {a.inproc_events} --replicas {a.replicas}"
        + (" --no-daemon" if a.no_daemon else f" --events {a.events} --repeats {a.repeats}")
        + f"` (`make bench-replicas`), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}.",
        "",
        f"In-process: the daemon's default clicks pipeline on one stream of "
        f"{a.inproc_events:,} click events keyed onto {PARTITIONS} partitions (each replica "
        "its partitions' polls, gloo on loopback, no broker). *bytes/sync*: the payload "
        "one replica puts into one gradient sync (allreduce) or one averaging (average) "
        "— a count of tensor bytes, the same on any machine; *ms/sync*: its median time; "
        "log loss: prequential, over every replica's events.",
        "",
        "| replicas | sync | embeddings | bytes/sync | ms/sync | syncs | events/s | vs 1 "
        "| log loss | vs 1 |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w, mode, sparse, r in inproc:
        lines.append(
            f"| {w} | {mode} | {_emb(sparse) if w > 1 else '-'} | "
            + (f"{r['bytes_per_sync']:,.0f} | {r['ms_per_sync']:.2f} | " if w > 1 else "- | - | ")
            + f"{r['sync_rounds']} | "
            f"{r['events_s']:,.0f} | {r['events_s'] / base['events_s']:.2f}× | "
            f"{r['log_loss']:.4f} | {r['log_loss'] / base['log_loss']:.3f}× |"
        )
    ratios = []
    for w in worlds:
        for mode in ("allreduce", "average"):
            got = {sp: r for ww, m, sp, r in inproc if ww == w and m == mode}
            if True in got and False in got and got[True]["bytes_per_sync"]:
                x = got[False]["bytes_per_sync"] / got[True]["bytes_per_sync"]
                ratios.append(f"{w} replicas, {mode}: {x:,.0f}× fewer bytes per sync as rows")
    if ratios:
        lines += ["", "Whole tables / rows, same run: " + "; ".join(ratios) + "."]
    if drows:
        dbase = drows[0][3]
        lines += [
            "",
            f"The daemon: one click topic of {PARTITIONS} partitions, {a.events:,} events, "
            "`torchrun --nproc-per-node N`; events trained per second, summed over the "
            "replicas, from the moment every replica holds its partitions (before it, the "
            "consumer group's first member trains alone) to the last event; median "
            f"(min–max) of {a.repeats}.",
            "",
            "| replicas | sync | embeddings | events/s | vs 1 replica |",
            "|---:|---|---|---:|---:|",
        ]
        for nproc, mode, sparse, med, lo, hi in drows:
            emb = _emb(sparse) if nproc > 1 else "-"
            lines.append(
                f"| {nproc} | {mode} | {emb} | {med:,.0f} ({lo:,.0f}–{hi:,.0f}) "
                f"| {med / dbase:.2f}× |"
            )
    lines.append(END)
    section = "\n".join(lines)
    print(section)
    if a.out:
        write_section(Path(a.out), section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
