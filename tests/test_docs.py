"""The docs stay true to the code (docs/, README.md, mkdocs.yml):

- the site builds with ``mkdocs build --strict`` (a broken link, a missing page, a page
  left out of the navigation fail);
- the generated references (config, metrics, command line) equal what
  scripts/gen_docs.py makes from the code now;
- every ``yaml`` block is a config, or a part of one, that validates as ``check-config``
  does, and every ``stream-trainer`` command in a shell block parses with the CLI's parser;
- README.md's links lead to files that exist.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
import types

import pytest
import yaml
from support import REPO

DOCS = REPO / "docs"
PAGES = sorted(DOCS.rglob("*.md")) + [REPO / "README.md"]
# a fenced block, also indented (inside a list item): its language and its text
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)
# a fenced block that shows a file: ```json title="clicks.avsc"
TITLED = re.compile(r'^[ \t]*```\w*[^\n]*title="([^"]+)"[^\n]*\n(.*?)^[ \t]*```', re.S | re.M)


def script(name: str) -> types.ModuleType:
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gen_docs() -> types.ModuleType:
    return script("gen_docs")


def blocks(*languages: str) -> list[tuple[str, str]]:
    """(``page:line``, text) of every fenced block in these languages, over all pages."""
    out = []
    for page in PAGES:
        text = page.read_text()
        for m in FENCE.finditer(text):
            if m.group(2) in languages:
                where = f"{page.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
                out.append((where, textwrap.dedent(m.group(3))))
    return out


# ---- the site ---------------------------------------------------------------------------
def test_the_site_builds_strictly(tmp_path):
    """Broken links or anchors, a page missing from the navigation or a nav entry without
    a page, a snippet (CHANGELOG.md, BENCHMARKS.md) that is not there: each fails."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").exists()


# ---- the generated references -----------------------------------------------------------
@pytest.mark.parametrize(
    "page", ["reference/config.md", "reference/metrics.md", "reference/cli.md"]
)
def test_a_generated_reference_equals_what_the_code_makes_now(page):
    generated = gen_docs().generate()[page]
    on_disk = (DOCS / page).read_text()
    diff = "".join(
        difflib.unified_diff(
            on_disk.splitlines(True), generated.splitlines(True), f"docs/{page}", "from the code"
        )
    )
    assert not diff, f"run .venv/bin/python scripts/gen_docs.py:\n{diff}"


def test_the_generator_s_examples_hold():
    import doctest

    assert doctest.testmod(gen_docs()).failed == 0


def test_the_references_cover_every_key_metric_and_flag():
    """What the pages must hold, counted from the code independently of the generator."""
    from prometheus_client import CollectorRegistry

    from stream_trainer.cli import build_parser
    from stream_trainer.config import Settings
    from stream_trainer.metrics import Metrics
    from stream_trainer.metrics.serving import ServingMetrics

    config = (DOCS / "reference" / "config.md").read_text()
    for section in ("kafka", "serving", "source", "pipelines[].drift", "pipelines[].labels"):
        assert f"\n## {section}\n" in config
    for key in Settings.model_fields:
        assert f"| `{key}` |" in config
    registry = CollectorRegistry()
    Metrics(registry), ServingMetrics(registry)
    metrics = (DOCS / "reference" / "metrics.md").read_text()
    names = {min(n, key=len) for n in registry._collector_to_names.values()}
    assert len(names) > 35 and all(f"`{n}" in metrics for n in names)
    cli = (DOCS / "reference" / "cli.md").read_text()
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {o for p in sub.choices.values() for a in p._actions for o in a.option_strings}
    assert {"--from", "--ignore-checkpoint-offsets", "--delayed-labels"} <= flags
    assert all(f"`{f}`" in cli for f in flags - {"-h", "--help"})


def test_every_config_key_has_a_description():
    """A new key without a docstring fails here (and the generator refuses it)."""
    from pydantic import BaseModel

    from stream_trainer.config import Settings

    missing, seen, todo = [], set(), [Settings]
    while todo:
        model = todo.pop()
        seen.add(model)
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{model.__name__}.{name}")
            for arg in [field.annotation, *_args(field.annotation)]:
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in seen:
                    todo.append(arg)
    assert not missing, f"fields without a docstring: {missing}"
    assert len(seen) >= 14


def _args(annotation):
    import typing

    for a in typing.get_args(annotation):
        yield a
        yield from _args(a)


# ---- config blocks ----------------------------------------------------------------------
BASE_PIPELINE = {"name": "base", "kind": "clicks", "topics": ["base"]}
CONFIG_BLOCKS = blocks("yaml")


@pytest.fixture
def plugin_as_mypkg(monkeypatch):
    """The docs' custom-model example names ``mypkg.features:MyFeaturizer`` and
    ``mypkg.models:build``: tests/plugin_example.py is that example, under those names."""
    import plugin_example

    pkg, features, models = (
        types.ModuleType(n) for n in ("mypkg", "mypkg.features", "mypkg.models")
    )
    features.MyFeaturizer = plugin_example.MeanFeaturizer
    models.build = plugin_example.build
    for module in (pkg, features, models):
        monkeypatch.setitem(sys.modules, module.__name__, module)


@pytest.mark.parametrize(("where", "text"), CONFIG_BLOCKS, ids=[w for w, _ in CONFIG_BLOCKS])
def test_a_config_block_validates_with_check_config(
    where, text, tmp_path, monkeypatch, plugin_as_mypkg
):
    """The block as a config file (a part of one gets a pipeline to stand in for the
    rest), through ``check-config``'s own function: settings, models and featurizers.
    The files a page shows (a fenced block with ``title="FILE"``: an Avro schema) are
    written where its configs name them, and as ``schemas/1.avsc`` (Confluent's)."""
    from stream_trainer.cli.commands import cmd_check_config

    monkeypatch.chdir(tmp_path)
    page = (REPO / where.split(":")[0]).read_text()
    for m in TITLED.finditer(page):
        (tmp_path / "schemas").mkdir(exist_ok=True)
        for name in (m.group(1), "schemas/1.avsc"):
            (tmp_path / name).write_text(textwrap.dedent(m.group(2)))

    doc = yaml.safe_load(text)
    assert isinstance(doc, dict) and doc, f"{where}: not a config (a mapping of settings)"
    if "pipelines" not in doc:
        doc = {**doc, "pipelines": [BASE_PIPELINE]}
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cmd_check_config(argparse.Namespace(file=str(path))) == 0
    assert "pipelines:" in out.getvalue()


def test_there_are_config_blocks_to_check():
    pages = {w.split(":")[0] for w, _ in CONFIG_BLOCKS}
    assert len(CONFIG_BLOCKS) >= 10 and "README.md" in pages


# ---- command blocks ---------------------------------------------------------------------
def commands() -> list[tuple[str, list[str]]]:
    """(where, argv after ``stream-trainer``) of every command in a shell block: lines after
    ``$ `` in ``console`` blocks, every line in ``bash``/``sh`` blocks, continuations
    joined; ``python -m stream_trainer ...`` (torchrun's) counts too."""
    out = []
    for where, text in blocks("console", "bash", "sh", "shell"):
        lang_console = any(line.startswith("$ ") for line in text.splitlines())
        logical, current = [], ""
        for line in text.splitlines():
            if current:
                current += " " + line.strip()
            elif lang_console and not line.startswith("$ "):
                continue
            else:
                current = line.removeprefix("$ ").strip()
            if current.endswith("\\"):
                current = current[:-1]
                continue
            logical.append(current)
            current = ""
        for line in logical:
            argv = shlex.split(line, comments=True)
            if argv[-1:] == ["&"]:  # started in the background: the command is the rest
                argv = argv[:-1]
            if argv[:1] == ["stream-trainer"]:
                out.append((where, argv[1:]))
            elif "stream_trainer" in argv and argv[argv.index("stream_trainer") - 1] == "-m":
                out.append((where, argv[argv.index("stream_trainer") + 1 :]))
    return out


COMMANDS = commands()


@pytest.mark.parametrize(
    ("where", "argv"), COMMANDS, ids=[f"{w} {' '.join(a[:2])}" for w, a in COMMANDS]
)
def test_a_documented_command_parses(where, argv):
    from stream_trainer.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}: stream-trainer {' '.join(argv)}: {err.getvalue()} ({exit_})")
    assert args.command == argv[0]


def test_there_are_commands_to_check():
    used = {argv[0] for _, argv in COMMANDS}
    assert {"run", "check-config", "produce", "report", "checkpoint", "demo"} <= used
    assert any(argv[:2] == ["checkpoint", "inspect"] for _, argv in COMMANDS)  # indented


# ---- the pictures ------------------------------------------------------------------------
def test_the_dashboard_picture_evaluates_the_panels_queries_over_scrapes(tmp_path):
    """scripts/dashboard_png.py on four scrapes of a real registry, 2 s apart: rates and
    quantiles as Prometheus would compute them, and every panel it draws still in the
    Grafana dashboard (a renamed panel fails the drawing)."""
    import json

    from prometheus_client import CollectorRegistry, generate_latest

    from stream_trainer.metrics import Metrics
    from stream_trainer.metrics.serving import ServingMetrics

    dash = script("dashboard_png")
    registry = CollectorRegistry()
    hooks, serving = Metrics(registry).pipeline("clicks", "page_hinkley"), ServingMetrics(registry)
    rows = []
    for i in range(4):
        hooks.on_batch(trained=1000, batch_loss=0.5, smoothed_loss=0.6 - 0.01 * i,
                       update_seconds=0.004, event_ages=[0.02] * 1000, lr=0.003,
                       model_version=10 * i, skipped=None)  # fmt: skip
        hooks.on_lag("clicks", 0, 5 - i)
        hooks.on_checkpoint(0.05, 1000.0 + 2 * i)
        serving.served("clicks", 10 * i)
        rows.append(
            {"t": 1000.0 + 2 * i, "samples": dash.parse(generate_latest(registry).decode())}
        )
    path = tmp_path / "scrapes.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scrapes = dash.Scrapes(path)
    t, rate = scrapes.rate("stream_trainer_events_trained_total")["clicks"]
    assert list(t) == [2.0, 4.0, 6.0] and list(rate) == [500.0, 500.0, 500.0]
    _, p50 = scrapes.quantile("stream_trainer_event_to_update_seconds", 0.5, 10)["clicks p50"]
    assert len(p50) == 3 and all(0.01 < q <= 0.025 for q in p50)  # 0.02 s, in its bucket
    _, lag = scrapes.gauge("stream_trainer_consumer_lag", "{topic}/{partition}")["clicks/0"]
    assert list(lag) == [5, 4, 3, 2]
    out = dash.draw(path, tmp_path / "dashboard.png", 10)
    assert out.read_bytes()[:4] == b"\x89PNG"


# ---- the README -------------------------------------------------------------------------
def test_the_readme_is_short_and_its_links_lead_somewhere():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, f"README links to nothing: {missing}"
    # two clicks at most: the pages a newcomer asks for are linked from it directly
    for page in ("how-to/point-at-your-topic.md", "reference/metrics.md", "how-to/upgrading.md"):
        assert f"(docs/{page})" in text
