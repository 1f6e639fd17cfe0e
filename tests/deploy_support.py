"""What the deploy/ files refer to: metric names in PromQL, promtool."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
_NAME = re.compile(r"\bstream_trainer_[a-z_]+\b")


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "stream-trainer.json").read_text())


def alert_rules() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


def promql_expressions() -> list[str]:
    d = dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    exprs += [r["expr"] for g in alert_rules()["groups"] for r in g["rules"]]
    return exprs


def metric_names() -> set[str]:
    """Every stream_trainer_* series name used by the dashboard and the alert rules."""
    return {m for e in promql_expressions() for m in _NAME.findall(e)}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: `make test` installs Debian's prometheus package "
            "(apt-get install prometheus)"
        )
    return path
