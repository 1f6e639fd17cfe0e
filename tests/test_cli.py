"""The command line, run as a user would: subprocesses, real broker, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from fakes import wait_until
from support import REPO, consume_all, scrape

from stream_trainer.local.broker import free_port
from stream_trainer.local.demo import EXAMPLE
from stream_trainer.local.view import LineView
from stream_trainer.metrics.scrape import per_pipeline
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stream_trainer", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_help_names_the_environment_variable_of_every_flag():
    import argparse

    from stream_trainer.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert "[env: STREAM_TRAINER_" in action.help, (name, action.dest)
    out = cli("run", "--help", env={"COLUMNS": "200"}).stdout
    assert "[env: STREAM_TRAINER_CONFIG]" in out


def test_broker_refuses_a_taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = cli("broker", "--port", str(port))
    assert r.returncode == 3
    assert r.stderr.strip() == (
        f"stream-trainer broker: error: port {port} on 127.0.0.1 is "
        "already in use; stop what holds it or choose another with --port"
    )


def test_broker_starts_and_stops_cleanly_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream_trainer", "broker", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert f"broker ready on 127.0.0.1:{port}" in line
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    wait_until(lambda: refused(port), f"nothing listening on {port}: the broker process gone")


def test_run_with_unreachable_broker_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines: [{name: a, kind: clicks, topics: [t]}]\n")
    port = free_port()
    r = cli(
        "run",
        "--config",
        str(cfg),
        "--bootstrap-servers",
        f"127.0.0.1:{port}",
        "--metrics-address",
        f"127.0.0.1:{free_port()}",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        timeout=120,  # a deadline, not a speed: it gives up instead of retrying forever
    )
    assert r.returncode == 3, r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"stream-trainer run: error: cannot reach Kafka at 127.0.0.1:{port}")
    assert "stream-trainer broker" in err and "Traceback" not in r.stderr


def test_bad_config_is_one_clear_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pipelines: [{name: a, kind: clickz, topics: [t]}]\n")
    r = cli("run", "--config", str(cfg))
    assert r.returncode == 2
    assert r.stderr.startswith(f"stream-trainer run: error: {cfg}: pipelines.0.kind:")
    assert len(r.stderr.strip().splitlines()) == 1


def test_produce_from_file_publishes_lines_as_is_in_order(broker, topic, tmp_path):
    lines = [b'{"a": 1}', b"not json at all", b'{"user_id": "u7", "z": [1, 2]}', b"\xff\xfe"]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")
    r = cli(
        "produce",
        "--from-file",
        str(path),
        "--topic",
        topic,
        "--partitions",
        "1",
        "--bootstrap-servers",
        broker.bootstrap,
        "--key-field",
        "user_id",
    )
    assert r.returncode == 0, r.stderr
    recs = consume_all(broker.bootstrap, topic, len(lines))
    assert [rec.value for rec in recs] == lines
    assert recs[2].key == b"u7" and recs[0].key is None


def test_produce_synthetic_stream_from_environment(broker, topic):
    r = cli(
        "produce",
        "ticks",
        "--topic",
        topic,
        "--drift-at",
        "20",
        env={
            "STREAM_TRAINER_PRODUCE_COUNT": "40",
            "STREAM_TRAINER_PRODUCE_BOOTSTRAP_SERVERS": broker.bootstrap,
        },
    )
    assert r.returncode == 0, r.stderr
    assert "40/40" in r.stderr  # progress for the run, with its total
    recs = consume_all(broker.bootstrap, topic, 40)
    assert len(recs) == 40 and all(rec.key.startswith(b"SYM") for rec in recs)


def test_produce_delayed_labels_publishes_impressions_and_later_clicks(broker, topic):
    """Impressions on the topic, each click's label on TOPIC.labels, in event-time order
    at the paced rate: a label goes out after the impressions older than it, before the
    newer ones."""
    n, rate = 400, 1000
    r = cli(
        "produce", "clicks", "--delayed-labels", "--topic", topic, "--count", str(n),
        "--rate", str(rate), "--min-delay", "0.5", "--max-delay", "5", "--partitions", "1",
        "--bootstrap-servers", broker.bootstrap,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"{n}/{n}" in r.stderr  # the progress counts impressions
    truth = list(make_generator("clicks", seed=0, count=n))
    clicks = sum(ev["label"] for ev in truth)
    imps = consume_all(broker.bootstrap, topic, n)
    labs = consume_all(broker.bootstrap, f"{topic}.labels", clicks)
    assert len(imps) == n and len(labs) == clicks > 0
    docs = [json.loads(rec.value) for rec in imps]
    assert [{k: v for k, v in d.items() if k != "request_id"} for d in docs] == [
        {k: v for k, v in ev.items() if k != "label"} for ev in truth
    ]  # the stream itself, without its labels
    assert [rec.key.decode() for rec in imps] == [d["user_id"] for d in docs]
    index = {d["request_id"]: i for i, d in enumerate(docs)}
    assert len(index) == n
    stamps = [(d["ts"], imp.timestamp) for imp, d in zip(imps, docs, strict=True)]
    delays = []
    for rec in labs:
        lab = json.loads(rec.value)
        i = index[lab["request_id"]]  # every label is an impression's
        assert truth[i]["label"] == 1 and lab["label"] == 1
        assert rec.key.decode() == lab["request_id"]
        delays.append(lab["ts"] - docs[i]["ts"])
        sent = rec.timestamp  # the producer's send time (ms)
        assert all(t <= sent for ts, t in stamps if ts < lab["ts"])  # after the older ones
        assert all(t >= sent for ts, t in stamps if ts > lab["ts"])  # before the newer ones
    assert len({json.loads(rec.value)["request_id"] for rec in labs}) == clicks
    assert 0.5 - 1e-6 <= min(delays) and max(delays) <= 5 + 1e-6
    assert sorted(delays)[len(delays) // 2] < 2.0  # heavy-tailed: most come soon
    assert imps[-1].timestamp - imps[0].timestamp >= 0.8 * (n - 10) / rate * 1000  # paced


def test_produce_delayed_labels_refuses_other_kinds():
    r = cli("produce", "ticks", "--delayed-labels", "--count", "1")
    assert r.returncode == 2 and "needs the clicks stream" in r.stderr


def refused(port: int) -> bool:
    """Nothing accepts a connection on the loopback ``port``."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def run_demo(workdir, port: int, metrics: str, serving: str):
    """The demo for 15 s at 300 events/s, piped: its output, the summary's last row per
    pipeline, the last scrape of its daemon and a score from its POST /predict/recs
    (both taken while it runs; None if none came)."""
    argv = [sys.executable, "-m", "stream_trainer", "demo", "--duration", "15",
            "--workdir", str(workdir), "--port", str(port), "--metrics-address", metrics,
            "--serving-address", serving, "--rate", "300"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    samples, scored = None, None
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                samples = scrape(metrics)
            except OSError:
                continue  # not serving yet, or stopped
            if scored is None:
                scored = predict(f"http://{serving}/predict/recs", DEMO_EVENT)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stdout[-2000:] + stderr[-2000:]
    # piped (not a terminal): the summary is lines, without escape sequences
    assert LineView.HEADER in stdout.splitlines() and "\x1b" not in stdout
    last = {}  # the summary's last row per pipeline: events/s, trained, ..., rejected
    for line in stdout.splitlines():
        row = line.split()
        if row[:1] in (["clicks"], ["ticks"], ["sensors"], ["recs"]):
            last[row[0]] = {"trained": float(row[2]), "rejected": float(row[-1])}
    return stdout, last, samples, scored


DEMO_EVENT = json.loads(EXAMPLE)  # the one in the curl line the demo prints


def predict(url: str, event: dict) -> dict | None:
    """The JSON answer of a POST, None before the model answers 200."""
    req = urllib.request.Request(url, data=json.dumps(event).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except OSError:  # HTTPError too: 503 before the first update
        return None


def resolved(samples) -> dict[str, float]:
    """The joined pipeline's impressions by outcome, and its late labels."""
    out = per_pipeline(samples, "stream_trainer_labels_unmatched_total", reason="late")
    return {
        **{o: per_pipeline(samples, "stream_trainer_impressions_resolved_total", outcome=o)
           .get("recs", 0.0) for o in ("labelled", "negative", "dropped")},
        "late": out.get("recs", 0.0),
    }  # fmt: skip


def test_demo_runs_twice_in_one_directory_and_leaves_no_processes_behind(tmp_path):
    """The second run continues the first one's model on fresh events: it trains in
    every pipeline, and rejects nothing as a duplicate of the first run's events. The
    joined pipeline (recs: delayed labels) resolves impressions in both runs, with its
    clicks (not as negatives whose labels come late), and the demo serves /predict."""
    metrics, serving = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    port = free_port()
    pipelines = {"clicks", "ticks", "sensors", "recs"}
    out, last, samples, scored = run_demo(tmp_path / "demo", port, metrics, serving)
    assert f"http://{metrics}/metrics" in out
    assert f"curl -s http://{serving}/predict/recs \\\n              -d '{EXAMPLE}'" in out
    assert "run 1: a fresh model" in out
    assert set(last) == pipelines
    assert min(row["trained"] for row in last.values()) > 0
    assert scored is not None and 0.0 < scored["score"] < 1.0 and scored["model_version"] > 0
    assert samples is not None, out[-3000:]
    joined = resolved(samples)
    assert joined["labelled"] > 0 and joined["negative"] > 0, joined
    assert "stopped" in out.splitlines()
    assert "loss over time: stream-trainer report --history" in out.splitlines()[-1]
    assert (tmp_path / "demo" / "history.jsonl").stat().st_size > 0
    ckpts = list((tmp_path / "demo" / "checkpoints").glob("*/ckpt-*.pt"))
    assert {p.parent.name for p in ckpts} == pipelines

    out, last, samples, scored = run_demo(tmp_path / "demo", port, metrics, serving)
    assert "run 2: continues the model of earlier runs" in out
    assert set(last) == pipelines
    for name, row in last.items():  # this run's counters: fresh events, trained
        assert row["trained"] > 0, (name, row, out[-3000:])
        assert row["rejected"] < 0.05 * (row["trained"] + row["rejected"]), (name, row)
    assert scored is not None and 0.0 < scored["score"] < 1.0
    assert samples is not None, out[-3000:]
    duplicates = per_pipeline(samples, "stream_trainer_events_rejected_total", reason="duplicate")
    assert set(duplicates) == pipelines and not any(duplicates.values()), duplicates
    # the new log's impressions wait for their clicks (about a third are clicked)
    joined = resolved(samples)
    assert joined["labelled"] >= 0.2 * (joined["labelled"] + joined["negative"]) > 0, joined
    assert joined["late"] <= 0.05 * joined["labelled"], joined
    assert "rejected (" not in out  # no "most events rejected" warning line
    for p in (port, int(metrics.rsplit(":", 1)[1]), int(serving.rsplit(":", 1)[1])):
        wait_until(lambda p=p: refused(p), f"nothing listening on {p}: broker and daemon gone")
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True)
    assert leftovers.stdout == b""
