"""An upgrade, end to end, against the local broker: an older release's daemon trains N
click events and stops; this tree's daemon continues on the same checkpoint directory,
topic and consumer group with N more.

    .venv/bin/python scripts/upgrade_check.py --from 93b9173 --events 20000 [--out FILE]

Checks and reports: every offset trained exactly once across both runs (the final
checkpoint's ledger is [0, end) on every partition), the model version continuing, and
the prequential log loss on the second N (the per-event losses of the output records)
beside two baselines on the same events, each run the same way: the old release
continuing on a copy of its own checkpoint, and a fresh model (today's code, no
checkpoint, the second N alone on a topic of their own). The target: within 1 % of the
old release, and clearly below the fresh model. The older release runs from a git
worktree of its commit with this tree's virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from stream_trainer.checkpoint.summary import ledger_ranges as ledger
from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import per_pipeline, scrape
from stream_trainer.producers import make_generator

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "clicks"


def produce(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> dict[int, int]:
    """Send ``events`` keyed by user; the records sent per partition."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    sent = [p.send(topic, value=json.dumps(e).encode(), key=str(e["user_id"]).encode())
            for e in events]  # fmt: skip
    p.flush()
    p.close()
    per: dict[int, int] = {}
    for f in sent:
        q = f.get(timeout=30).partition
        per[q] = per.get(q, 0) + 1
    return per


def outputs(bootstrap: str, topic: str) -> dict[tuple[int, int], float]:
    """{(partition, offset): loss} of every output record of ``topic``."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      consumer_timeout_ms=3000, auto_offset_reset="earliest")  # fmt: skip
    parts = c.partitions_for_topic(topic) or set()
    c.assign([TopicPartition(topic, q) for q in parts])
    c.seek_to_beginning()
    out = {}
    for rec in c:
        doc = json.loads(rec.value)
        out[(int(doc["partition"]), int(doc["offset"]))] = float(doc["loss"])
    c.close()
    return out


def newest(ckpt: Path) -> dict[str, Any]:
    path = sorted((ckpt / PIPELINE).glob("ckpt-*.pt"))[-1]
    return torch.load(path, weights_only=True)


class Run:
    """One daemon: a tree (this one, or an older release's worktree), a config."""

    def __init__(self, work: Path, name: str, tree: Path, cfg: dict[str, Any]) -> None:
        self.metrics = f"127.0.0.1:{free_port()}"
        self.cfg_path = work / f"{name}.yaml"
        self.cfg_path.write_text(yaml.safe_dump({**cfg, "metrics": {"address": self.metrics}}))
        self.log = work / f"{name}.log"
        self.name, self.tree = name, tree
        self.proc: subprocess.Popen[bytes] | None = None
        self.scraped: dict[str, Any] = {}  # the last /metrics read before the stop

    def until_caught_up(self, partitions: int, timeout_s: float = 600.0, expect: int = 0) -> float:
        """Start, wait until every partition is read to its end and trained (and at
        least ``expect`` events trained by this process: a lag of 0 can be read before
        the first fetch), stop (SIGTERM: the final checkpoint); the seconds it ran."""
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        t0 = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stream_trainer", "run", "--config", str(self.cfg_path)],
                cwd=self.tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            quiet = 0
            while time.monotonic() - t0 < timeout_s:
                time.sleep(0.5)
                if self.proc.poll() is not None:
                    raise SystemExit(f"{self.name}: the daemon exited; see {self.log}")
                try:
                    s = scrape(f"http://{self.metrics}/metrics")
                except OSError:
                    continue
                lags = per_pipeline(s, "stream_trainer_consumer_lag")
                assigned = per_pipeline(s, "stream_trainer_assigned_partitions")
                pending = sum(per_pipeline(s, "stream_trainer_batch_pending").values())
                done = sum(assigned.values()) == partitions and not sum(lags.values())
                trained = sum(per_pipeline(s, "stream_trainer_events_trained_total").values())
                done = done and trained >= expect
                quiet = quiet + 1 if done and not pending else 0
                self.scraped = s
                if quiet >= 4:  # two seconds with nothing left to read or train
                    break
            else:
                raise SystemExit(f"{self.name}: not caught up in {timeout_s} s; see {self.log}")
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(120)
        if code != 0:
            raise SystemExit(f"{self.name}: exit {code}; see {self.log}")
        return time.monotonic() - t0


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="base", required=True, help="the older release's commit")
    ap.add_argument("--events", type=int, default=20000, help="N: events per run")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, help="also append the report (markdown) here")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="upgrade-"))
    old_tree = work / "old"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old_tree), a.base],
                   cwd=ROOT, check=True)  # fmt: skip
    broker = LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")).start()
    bs = broker.bootstrap
    try:
        events = list(make_generator("clicks", seed=a.seed, count=2 * a.events))
        first, second = events[: a.events], events[a.events :]
        create_topics(bs, {"clicks": a.partitions, "fresh": a.partitions})
        for t in ("upgraded", "old", "fresh"):
            create_topics(bs, {f"out.{t}": 1})

        def cfg(ckpt: Path, topic: str, out: str) -> dict[str, Any]:
            return {
                "kafka": {"bootstrap_servers": bs},
                "checkpoint": {"dir": str(ckpt), "every_seconds": 5},
                "pipelines": [{"name": PIPELINE, "kind": "clicks", "topics": [topic],
                               "output_topic": out}],
            }  # fmt: skip

        # 1. the older release trains the first N, and stops
        sent = produce(bs, "clicks", first)
        ckpt = work / "ckpt"
        Run(work, "1-old-first", old_tree, cfg(ckpt, "clicks", "out.first")).until_caught_up(
            a.partitions
        )
        before = newest(ckpt)
        shutil.copytree(ckpt, work / "ckpt-old")
        # 2. N more; this tree continues on the same directory (the same consumer group)
        for q, n in produce(bs, "clicks", second).items():
            sent[q] = sent.get(q, 0) + n
        produce(bs, "fresh", second)
        up = Run(work, "2-upgraded", ROOT, cfg(ckpt, "clicks", "out.upgraded"))
        up.until_caught_up(a.partitions)
        after = newest(ckpt)
        # the baselines on the same N: the old release continuing on its own checkpoint
        # (its group's offsets were committed past them: its checkpoint's offsets rule);
        # a fresh model on a topic of the second N alone
        Run(work, "3-old-continues", old_tree,
            cfg(work / "ckpt-old", "clicks", "out.old")).until_caught_up(a.partitions)  # fmt: skip
        fresh_cfg = cfg(work / "ckpt-fresh", "fresh", "out.fresh")
        fresh_cfg["pipelines"][0]["name"] = "fresh"
        Run(work, "4-fresh", ROOT, fresh_cfg).until_caught_up(a.partitions)

        seen = set(before["offsets"])
        cut = {int(k.rsplit(":", 1)[1]): int(v) for k, v in before["offsets"].items()}
        losses = {}
        for t in ("upgraded", "old"):
            recs = outputs(bs, f"out.{t}")
            losses[t] = [v for (q, o), v in recs.items() if o >= cut[q]]
        losses["fresh"] = list(outputs(bs, "out.fresh").values())
        ends = {f"clicks:{q}": n for q, n in sorted(sent.items())}
        exact = ledger(after) == {k: [(0, n)] for k, n in ends.items()} and seen <= set(ends)
        v0, v1 = int(before["learner"]["updates"]), int(after["learner"]["updates"])
        ll = {t: mean(x) for t, x in losses.items()}
        ratio = ll["upgraded"] / ll["old"]
        met = exact and v1 > v0 and ratio <= 1.01 and ll["upgraded"] < ll["fresh"]
        lines = [
            f"### Upgrade from {a.base} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"`python scripts/upgrade_check.py --from {a.base} --events {a.events} "
            f"--partitions {a.partitions}`",
            "",
            f"- ledger after both runs: {ledger(after)} (topic ends {ends}): "
            f"{'exact, every offset once' if exact else 'NOT EXACT'}",
            f"- model version: {v0} after the old release, {v1} after this one "
            f"({'continued' if v1 > v0 else 'NOT CONTINUED'})",
            f"- format: the old file said {before['format_version']}, the new one says "
            f"{after['format_version']} (package {after.get('package_version')})",
            f"- log loss on the second {a.events:,} events ({len(losses['upgraded']):,} / "
            f"{len(losses['old']):,} / {len(losses['fresh']):,} records): upgraded "
            f"{ll['upgraded']:.4f}, the old release continuing {ll['old']:.4f} "
            f"({ratio:.4f}x), a fresh model {ll['fresh']:.4f}",
            f"- target (within 1 % of the old release, below a fresh model): "
            f"{'met' if met else 'NOT MET'}",
            "",
        ]  # fmt: skip
        print("\n".join(lines))
        if a.out is not None:
            with open(a.out, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        return 0 if met else 1
    finally:
        broker.stop()
        subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT,
                       check=False)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
