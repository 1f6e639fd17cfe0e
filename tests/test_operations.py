"""Operations with the real tools: a real Prometheus scraping the running daemon,
promtool on a real scrape, and `report` drawing from both history sources."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml
from deploy_support import metric_names, promtool
from support import Daemon, Trickle, base_config

from stream_trainer.edges.admin import create_topics
from stream_trainer.evaluation import report
from stream_trainer.local.broker import free_port
from stream_trainer.producers import make_generator

pytestmark = pytest.mark.integration
KINDS = {"clicks": "user_id", "ticks": "symbol", "sensors": "sensor_id"}


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


def last_minute_of_smoothed_loss(base: str) -> dict:
    end = time.time()
    query = 'stream_trainer_loss{window="smoothed"}'
    return prom_get(base, "/api/v1/query_range", query=query, start=end - 60, end=end, step=1)


def enough_history(base: str) -> bool:
    """Every pipeline's smoothed loss has 8 points, 3 of them distinct, over the last
    minute, and every series the dashboard and the alert rules use exists."""
    try:
        loss = last_minute_of_smoothed_loss(base)
        names = prom_get(base, "/api/v1/query", query='{__name__=~"stream_trainer_.+"}')
    except (OSError, AssertionError):
        return False
    values = {s["metric"]["pipeline"]: s["values"] for s in loss["result"]}
    return (
        set(values) == set(KINDS)
        and all(len(v) >= 8 and len({x for _, x in v}) >= 3 for v in values.values())
        and metric_names() <= {s["metric"]["__name__"] for s in names["result"]}
    )


def test_prometheus_scrapes_loss_over_time_and_every_dashboard_metric(
    broker, topic, workdir, metrics_port, prometheus, tmp_path
):
    bs = broker.bootstrap
    topics = {k: f"{topic}-{k}" for k in KINDS}
    create_topics(bs, {t: 2 for t in topics.values()})
    history = workdir / "history.jsonl"
    cfg = base_config(
        bs,
        workdir / "ckpt",
        [{"name": k, "kind": k, "topics": [t]} for k, t in topics.items()],
        history={"path": str(history), "every_seconds": 1.0},
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
    try:
        for k in KINDS:
            d.wait_assigned(k, 2)
        for p in producers:
            p.start()
        # until Prometheus holds what the assertions below need (was a fixed 15 s sleep)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not enough_history(base):
            time.sleep(1)
        scrape = urllib.request.urlopen(f"http://{d.address}/metrics", timeout=5).read()
        # promtool on a real scrape of the running daemon
        r = subprocess.run([promtool(), "check", "metrics"], input=scrape, capture_output=True)
        assert r.returncode == 0, r.stdout + r.stderr
        loss = last_minute_of_smoothed_loss(base)
        per_pipeline = {s["metric"]["pipeline"]: s["values"] for s in loss["result"]}
        assert set(per_pipeline) == set(KINDS)
        for name, values in per_pipeline.items():
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
    assert set(h) == set(KINDS) and all(len(s.smoothed) >= 5 for s in h.values())
    png = report.draw(h, tmp_path / "history.png")
    assert png.stat().st_size > 10_000
