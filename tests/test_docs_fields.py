"""docs/how-to/field-mapping.md and docs/reference/formats.md: every YAML config they
show passes ``stream-trainer check-config`` (with the schema files the pages show,
written where the configs name them)."""

from __future__ import annotations

import argparse
import re

import pytest
from support import REPO

from stream_trainer.cli.commands import cmd_check_config

PAGES = ("docs/how-to/field-mapping.md", "docs/reference/formats.md")
BLOCK = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.S | re.M)


def blocks(page: str) -> list[tuple[str, str, str]]:
    """(language, info after it, text) of each fenced block."""
    return BLOCK.findall((REPO / page).read_text())


@pytest.mark.parametrize("page", PAGES)
def test_every_config_of_the_page_passes_check_config(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "schemas").mkdir()
    configs = []
    for lang, info, text in blocks(page):
        title = re.search(r'title="([^"]+)"', info)
        if lang == "json" and title:  # a schema file the configs name
            (tmp_path / title.group(1)).write_text(text)
            (tmp_path / "schemas" / "1.avsc").write_text(text)
        elif lang == "yaml":
            configs.append(text)
    assert configs
    for i, text in enumerate(configs):
        path = tmp_path / f"config{i}.yaml"
        path.write_text(text)
        assert cmd_check_config(argparse.Namespace(file=str(path))) == 0, text  # or raises
        assert "pipelines:" in capsys.readouterr().out
