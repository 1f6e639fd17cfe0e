"""Fixtures shared by the tiers, and how the suite runs in parallel (pytest-xdist).

`make test` runs the suite on several workers (``-n``, see the Makefile). Each worker is
its own process with its own session: its own broker (the ``broker`` fixture), so that
consumer groups, which the daemons name after their pipelines, never meet across workers.
Modules whose tests are timing-sensitive or stop whole process trees (SIGKILL, a frozen
broker, torchrun agents) run one test at a time on one worker (``--dist loadgroup``, the
groups in ``SERIAL_GROUPS``); they still run beside the other workers' tests.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_trainer.local.broker import LocalBroker, free_port

_names = itertools.count()

# modules here that are not tests (--doctest-modules would import them): a plugin whose
# import blocks until its test says so
collect_ignore = ["gated_plugin.py"]

# module file name -> xdist group: each group's tests run in order on a single worker
SERIAL_GROUPS = {
    "test_faults.py": "faults",  # kill -9, broker freezes and restarts, timed mid-stream
    "test_faults_labels.py": "faults",  # kill -9 of a daemon joining delayed labels
    "test_replicas.py": "replicas",  # torchrun agents: many processes and ports each
    "test_sync.py": "sync",  # two gloo ranks spawned once for the module (its fixture)
}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks (it suffixes the node ids)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = SERIAL_GROUPS.get(item.path.name)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """A real Kafka-protocol broker (Tansu, in memory) on a free loopback port, one per
    xdist worker (a session is a worker's)."""
    b = LocalBroker(port=free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test (the session broker is shared by a worker's tests)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw")
    return f"t{worker}-{next(_names)}-{free_port()}"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
