"""A config change of the model's shape between two runs, end to end against the local
broker (issue 26): run 1 trains N click events with ``model.hidden`` 64 and
``id_buckets`` B and stops; run 2 continues on the same checkpoint directory, topic and
consumer group with ``hidden`` 128 and ``id_buckets`` 2B for M more (the restored model
stays champion, one of the new shape races it: pipeline/reshape.py); beside it, run 2
unchanged (hidden 64, B) on a copy of run 1's checkpoint, on the same M events.

    .venv/bin/python scripts/config_change_check.py --events 20000 --after 10000 [--out FILE]

Reports: every offset trained exactly once across runs 1 and 2 (the final checkpoint's
ledger is [0, end) per partition); the prequential log loss over the M events after the
change (the output records' per-event losses: what the pipeline scored and emitted) for
the changed and the unchanged run, and their ratio (target <= 1.01); the race as the
metrics showed it before the stop (``challenger_outcomes_total``,
``challenger_racing{cause="config"}``) and the ``config applied`` log line; which shape
the final checkpoint holds. Exit 0 when the ledger is exact and the ratio is met.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from upgrade_check import ROOT, Run, mean, newest, outputs, produce

from stream_trainer.checkpoint.summary import ledger_ranges as ledger
from stream_trainer.edges.admin import create_topics
from stream_trainer.local.broker import LocalBroker, free_port
from stream_trainer.metrics.scrape import sample
from stream_trainer.producers import make_generator

PIPELINE = "clicks"  # (upgrade_check's newest() reads this pipeline's directory)


class Asker(threading.Thread):
    """Asks the daemon's /predict for one event's score every 0.2 s while it runs:
    the answers' statuses and the model versions they were scored with."""

    def __init__(self, address: str, event: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.address, self.body = address, json.dumps(event).encode()
        self.statuses: dict[int, int] = {}
        self.versions: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        host, port = self.address.rsplit(":", 1)
        while not self.done.wait(0.2):
            try:
                conn = http.client.HTTPConnection(host, int(port), timeout=5)
                conn.request("POST", f"/predict/{PIPELINE}", self.body,
                             {"Content-Type": "application/json"})  # fmt: skip
                resp = conn.getresponse()
                doc = json.loads(resp.read() or b"{}")
                conn.close()
            except (OSError, ValueError):
                continue  # (not serving yet, or stopping)
            self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                self.versions.append(int(doc["model_version"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=20000, help="N: events of run 1")
    ap.add_argument("--after", type=int, default=10000, help="M: events after the change")
    ap.add_argument("--buckets", type=int, default=1 << 16, help="B: run 1's id_buckets")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, help="also append the report (markdown) here")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="config-change-"))
    broker = LocalBroker(port=free_port(), log=open(work / "broker.log", "wb")).start()
    bs = broker.bootstrap
    try:
        events = list(make_generator("clicks", seed=a.seed, count=a.events + a.after))
        first, second = events[: a.events], events[a.events :]
        create_topics(bs, {"clicks": a.partitions})
        for t in ("first", "changed", "same"):
            create_topics(bs, {f"out.{t}": 1})

        def cfg(ckpt: Path, out: str, hidden: int, buckets: int) -> dict[str, Any]:
            return {
                "kafka": {"bootstrap_servers": bs},
                "checkpoint": {"dir": str(ckpt), "every_seconds": 5},
                "pipelines": [{"name": PIPELINE, "kind": "clicks", "topics": ["clicks"],
                               "output_topic": out, "model": {"hidden": hidden},
                               "featurizer": {"id_buckets": buckets}}],
            }  # fmt: skip

        b = a.buckets
        sent = produce(bs, "clicks", first)
        ckpt = work / "ckpt"
        first_run = Run(work, "1-first", ROOT, cfg(ckpt, "out.first", 64, b))
        first_run.until_caught_up(a.partitions, expect=a.events)
        before = newest(ckpt)
        shutil.copytree(ckpt, work / "ckpt-same")
        for q, n in produce(bs, "clicks", second).items():
            sent[q] = sent.get(q, 0) + n
        serving = f"127.0.0.1:{free_port()}"  # run 2 serves /predict (its own process)
        changed_cfg = {**cfg(ckpt, "out.changed", 128, 2 * b), "serving": {"address": serving}}
        changed = Run(work, "2-changed", ROOT, changed_cfg)
        asker = Asker(serving, {k: v for k, v in second[0].items() if k != "label"})
        asker.start()
        changed.until_caught_up(a.partitions, expect=a.after)
        asker.done.set()
        asker.join()
        after = newest(ckpt)
        # the unchanged run 2 on the same events (its checkpoint's offsets rule)
        same = Run(work, "3-unchanged", ROOT, cfg(work / "ckpt-same", "out.same", 64, b))
        same.until_caught_up(a.partitions, expect=a.after)

        cut = {int(k.rsplit(":", 1)[1]): int(v) for k, v in before["offsets"].items()}
        losses = {}
        for t in ("changed", "same"):
            recs = outputs(bs, f"out.{t}")
            losses[t] = [v for (q, o), v in recs.items() if o >= cut[q]]
        ends = {f"clicks:{q}": n for q, n in sorted(sent.items())}
        exact = ledger(after) == {k: [(0, n)] for k, n in ends.items()}
        ll = {t: mean(x) for t, x in losses.items()}
        ratio = ll["changed"] / ll["same"]
        s = changed.scraped
        promoted = sample(s, "stream_trainer_challenger_outcomes_total",
                          pipeline=PIPELINE, outcome="promoted") or 0.0  # fmt: skip
        racing = sample(s, "stream_trainer_challenger_racing", pipeline=PIPELINE, cause="config")
        log_text = changed.log.read_text()
        errors = [ln for ln in log_text.splitlines() if " error " in ln or "Traceback" in ln]
        applied = [ln for ln in log_text.splitlines() if "config applied" in ln]
        settings = json.loads(after["settings"])
        holds = (f"hidden {settings['model'].get('hidden')}, id_buckets "
                 f"{settings['featurizer'].get('id_buckets')}"
                 + (", a race in progress" if after["reshape"] else ""))  # fmt: skip
        served = asker.statuses.get(200, 0)
        versions = f"{min(asker.versions)}..{max(asker.versions)}" if asker.versions else "-"
        met = exact and ratio <= 1.01 and len(losses["changed"]) == a.after and not errors
        lines = [
            f"### Config change: hidden 64 -> 128, id_buckets {b} -> {2 * b} "
            f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
            "",
            f"`python scripts/config_change_check.py --events {a.events} --after {a.after} "
            f"--buckets {b} --partitions {a.partitions} --seed {a.seed}`",
            "",
            f"- ledger after runs 1 and 2: {ledger(after)} (topic ends {ends}): "
            f"{'exact, every offset once' if exact else 'NOT EXACT'}",
            f"- log loss over the {a.after:,} events after the change "
            f"({len(losses['changed']):,} / {len(losses['same']):,} records): changed "
            f"{ll['changed']:.4f}, unchanged {ll['same']:.4f}: **{ratio:.4f} x** "
            f"(target <= 1.01: {'met' if ratio <= 1.01 else 'NOT MET'})",
            f"- the race in the metrics before the stop: challenger_outcomes_total"
            f"{{outcome=\"promoted\"}} {promoted:.0f}, challenger_racing{{cause=\"config\"}} "
            f"{racing}; 'config applied' log lines: {len(applied)}",
            f"- /predict during run 2 (every 0.2 s): answers by status {asker.statuses}, "
            f"model versions {versions}; {served} scored; error lines in its log: "
            f"{len(errors)}",
            f"- the final checkpoint holds: {holds} (model version "
            f"{int(before['learner']['updates'])} -> {int(after['learner']['updates'])})",
            "",
        ]  # fmt: skip
        if applied:
            lines.insert(-1, f"- {applied[0][:400]}")
        print("\n".join(lines))
        if a.out is not None:
            with open(a.out, "a") as fh:
                fh.write("\n".join(lines) + "\n")
        return 0 if met else 1
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
