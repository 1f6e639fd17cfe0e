"""The README's hand-written references stay in sync with the code they describe: the
metrics table with the registered metrics (names and labels), the commands with every
flag of the argument parser."""

from __future__ import annotations

import argparse
import re

from prometheus_client import CollectorRegistry
from support import REPO

from stream_trainer.cli import build_parser
from stream_trainer.metrics import Metrics

README = (REPO / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def registered_metrics() -> dict[str, set[str]]:
    """{exposed name: label names} of every metric the daemon registers."""
    registry = CollectorRegistry()
    Metrics(registry)
    out: dict[str, set[str]] = {}
    for collector, names in registry._collector_to_names.items():
        base = min(names, key=len)
        kind = getattr(collector, "_type", "")
        name = {"counter": f"{base}_total", "info": f"{base}_info"}.get(kind, base)
        labels = set(getattr(collector, "_labelnames", ()))
        if kind == "info":
            labels |= {"version"}  # an Info's labels are its value's keys
        out[name] = labels
    return out


def readme_metrics() -> dict[str, set[str]]:
    """{name: label names} from the rows of the README's metrics table."""
    out: dict[str, set[str]] = {}
    # (and the docs pages' tables of the same form: the README moves into them)
    docs = "\n".join(f.read_text() for f in sorted((REPO / "docs").glob("*.md")))
    for line in (_section("Metrics") + "\n" + docs).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`stream_trainer_"):
            continue
        labels = {re.split(r"[=`\s]", c.strip().strip("`"))[0] for c in cells[1].split(",")}
        for name in re.findall(r"`(stream_trainer_[a-z_]+)`", cells[0]):
            out[name] = labels - {""}
    return out


def test_the_metrics_table_lists_every_registered_metric_with_its_labels():
    assert readme_metrics() == registered_metrics()


def test_every_flag_of_every_command_is_in_the_readme():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = {
        f"{command} {option}"
        for command, p in sub.choices.items()
        for action in p._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
        if not re.search(rf"`[^`]*{re.escape(option)}\b[^`]*`", README)
    }
    assert not missing, f"flags the README does not mention: {sorted(missing)}"
