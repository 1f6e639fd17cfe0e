from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_trainer.local.broker import LocalBroker, free_port

_names = itertools.count()


@pytest.fixture(scope="session")
def broker() -> Iterator[LocalBroker]:
    """A real Kafka-protocol broker (Tansu, in memory) on a free loopback port."""
    b = LocalBroker(port=free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def topic() -> str:
    """A fresh topic name per test (the session broker is shared)."""
    return f"t{next(_names)}-{free_port()}"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
