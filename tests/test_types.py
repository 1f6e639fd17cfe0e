"""stream_trainer/ passes the type checker: mypy, as pyproject.toml's ``[tool.mypy]``
configures it (why mypy and not pyright: the comment there).

One test in one subprocess, beside the rest of the parallel run (it waits on mypy, a
single core: ~30-60 s cold on 2 busy cores). Its cache is the repository's ``.mypy_cache``
(git-ignored), so a run after a small change re-checks only what changed (~2 s).
``-m 'not types'`` leaves it out of a quick run; ``make lint`` runs the same check.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.types
def test_stream_trainer_passes_mypy() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy"],  # files, flags and plugins: pyproject.toml
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"mypy exited {run.returncode}:\n{run.stdout}{run.stderr}"
    assert "Success: no issues found" in run.stdout, run.stdout + run.stderr
