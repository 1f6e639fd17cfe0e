"""Operations with the real tools: a real Prometheus scraping the running daemon,
promtool on a real scrape, and `report` drawing from both history sources."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from deploy_support import metric_names, promtool
from support import Daemon, Trickle, base_config

from stream_trainer.edges.admin import create_topics
from stream_trainer.errors import StreamTrainerError
from stream_trainer.evaluation import report
from stream_trainer.local.broker import free_port
from stream_trainer.producers import make_generator
from stream_trainer.producers.delayed import IMPRESSION, delayed_labels
from stream_trainer.producers.publish import Aside

pytestmark = pytest.mark.integration
KINDS = {"clicks": "user_id", "ticks": "symbol", "sensors": "sensor_id"}
JOINED = "joined"  # a clicks pipeline on delayed labels: the joiner's series
PIPELINES = {*KINDS, JOINED}


def prom_get(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]


@pytest.fixture
def prometheus(tmp_path):
    """Start a real Prometheus on loopback; yields (base URL, function to add a target)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: `make test` installs Debian's prometheus package")
    port = free_port()
    procs = []

    def start(target: str) -> str:
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": "stream-trainer", "static_configs": [{"targets": [target]}]}
            ],
        }
        (tmp_path / "prom.yml").write_text(yaml.safe_dump(cfg))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={tmp_path / 'prom.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1)
                return base
            except OSError:
                time.sleep(0.2)
        raise AssertionError((tmp_path / "prometheus.log").read_text()[-2000:])

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def post(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def last_minute_of_smoothed_loss(base: str) -> dict:
    end = time.time()
    query = 'stream_trainer_loss{window="smoothed"}'
    return prom_get(base, "/api/v1/query_range", query=query, start=end - 60, end=end, step=1)


def enough_history(base: str, history: Path) -> bool:
    """Every pipeline has a smoothed loss, each kind's with 8 points, 3 of them distinct,
    over the last minute, and every series the dashboard and the alert rules use exists;
    and the daemon's history file holds 5 smoothed losses of each kind (Prometheus' range
    query repeats a sample until it is stale, so its 8 points may be fewer scrapes)."""
    try:
        h = report.from_history(history)
    except StreamTrainerError:
        return False
    if not all(k in h and len(h[k].smoothed) >= 5 for k in KINDS):
        return False
    try:
        loss = last_minute_of_smoothed_loss(base)
        names = prom_get(base, "/api/v1/query", query='{__name__=~"stream_trainer_.+"}')
    except (OSError, AssertionError):
        return False
    values = {s["metric"]["pipeline"]: s["values"] for s in loss["result"]}
    return (
        set(values) == PIPELINES
        and all(len(values[k]) >= 8 and len({x for _, x in values[k]}) >= 3 for k in KINDS)
        and metric_names() <= {s["metric"]["__name__"] for s in names["result"]}
    )


def test_prometheus_scrapes_loss_over_time_and_every_dashboard_metric(
    broker, topic, workdir, metrics_port, prometheus, tmp_path
):
    bs = broker.bootstrap
    topics = {k: f"{topic}-{k}" for k in [*KINDS, JOINED]}
    labels = f"{topics[JOINED]}.labels"
    create_topics(bs, {t: 2 for t in [*topics.values(), labels]})
    history = workdir / "history.jsonl"
    serve = f"127.0.0.1:{free_port()}"
    pipes = [{"name": k, "kind": k, "topics": [topics[k]]} for k in KINDS]
    pipes.append({"name": JOINED, "kind": "clicks", "topics": [topics[JOINED]],
                  "labels": {"topic": labels, "window_s": 30}})  # fmt: skip
    cfg = base_config(
        bs,
        workdir / "ckpt",
        pipes,
        history={"path": str(history), "every_seconds": 1.0},
        serving={"address": serve},  # the clicks pipelines serve: the serving series
    )
    d = Daemon(cfg, workdir, metrics_port).start()
    base = prometheus(d.address)
    producers = [
        Trickle(
            bs,
            topics[k],
            list(make_generator(k, seed=3, count=20_000, drift_at=8000)),
            key,
            rate=1000,
        )
        for k, key in KINDS.items()
    ]
    stream = delayed_labels(make_generator("clicks", seed=5, count=6000), max_delay_s=60)
    joined = [ev if k == IMPRESSION else Aside(labels, ev, "request_id") for k, ev in stream]
    producers.append(Trickle(bs, topics[JOINED], joined, "user_id", rate=300))
    try:
        for k in KINDS:
            d.wait_assigned(k, 2)
        d.wait_assigned(JOINED, 4)
        for p in producers:
            p.start()
        # one request: the requests' series (its outcome ok, or not ready before an update)
        ask = json.dumps({k: v for k, v in joined[0].items() if k != "request_id"}).encode()
        assert post(f"http://{serve}/predict/clicks", ask) in (200, 503)
        # until Prometheus holds what the assertions below need (was a fixed 15 s sleep)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not enough_history(base, history):
            time.sleep(1)
        scrape = urllib.request.urlopen(f"http://{d.address}/metrics", timeout=5).read()
        # promtool on a real scrape of the running daemon
        r = subprocess.run([promtool(), "check", "metrics"], input=scrape, capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
        loss = last_minute_of_smoothed_loss(base)
        per_pipeline = {s["metric"]["pipeline"]: s["values"] for s in loss["result"]}
        assert set(per_pipeline) == PIPELINES
        for name in KINDS:  # (the joined pipeline's loss needs labels: only there)
            values = per_pipeline[name]
            distinct = {v for _, v in values}
            assert len(values) >= 8 and len(distinct) >= 3, (name, values[:5])
        names = {
            s["metric"]["__name__"]
            for s in prom_get(base, "/api/v1/query", query='{__name__=~"stream_trainer_.+"}')[
                "result"
            ]
        }
        missing = metric_names() - names
        assert not missing, missing
        # report straight from Prometheus, and from the daemon's history file
        png = report.draw(report.from_prometheus(base, minutes=2), tmp_path / "prom.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        assert d.terminate() == 0
    h = report.from_history(history)
    points = {k: len(h[k].smoothed) for k in h}
    assert set(h) == PIPELINES and all(points[k] >= 5 for k in KINDS), points
    png = report.draw(h, tmp_path / "history.png")
    assert png.stat().st_size > 10_000
