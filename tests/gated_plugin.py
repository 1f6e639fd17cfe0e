"""A plugin whose import waits for the test: a start-up that lasts until the test has
signalled the daemon (``test_faults.py``). It says it got here (``<gate>.reached``),
then waits for the file ``$STREAM_TRAINER_TEST_GATE`` (60 s at most)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from plugin_example import MeanFeaturizer, build

__all__ = ["MeanFeaturizer", "build"]

_gate = Path(os.environ["STREAM_TRAINER_TEST_GATE"])
_gate.with_suffix(".reached").touch()
_deadline = time.monotonic() + 60
while not _gate.exists() and time.monotonic() < _deadline:
    time.sleep(0.02)
