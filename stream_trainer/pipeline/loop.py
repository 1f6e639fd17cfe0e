"""The one loop every runner shares: poll with backoff, the runner's step, its
once-a-second work, its periodic checkpoint, and a final one.

A runner (single process, replica, per-key shards) says what a step is; the loop says
when things happen. Broker failures never leave it: a failing poll logs, backs off and
returns nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from stream_trainer.errors import BrokerError, CheckpointError
from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.pipeline.ports import Record, Source

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.01  # kafka-python sleeps retry_backoff_ms in a poll with no fetch in flight


class Steps(Protocol):
    """What the loop drives."""

    def poll_timeout(self, idle_s: float) -> float:
        """How long the next poll may wait (less when a batch is nearly due)."""
        ...

    def step(self, records: list[Record], stopping: bool) -> bool:
        """Handle one poll's records and train what is due; False leaves the loop."""
        ...

    def every_second(self, now: float) -> None: ...

    def checkpoint_due(self, now: float) -> bool: ...

    def checkpoint(self) -> bool: ...

    def periodic_checkpoint(self) -> bool:
        """The loop's checkpoint (when due): may finish off the loop's thread, the
        offsets committed by a later step once the file is durable."""
        ...

    def finish(self) -> bool:
        """After the loop: the final checkpoint (where the runner did not take it already);
        False when it could not be written."""
        ...


class Poller:
    """``source.poll`` that, while the broker fails, logs and backs off (0.1 s doubling
    to 5 s) and returns nothing, so the loop around it carries on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backoff = 0.0

    def __call__(self, source: Source, stop: threading.Event, timeout_s: float) -> list[Record]:
        try:
            records = source.poll(timeout_s)
        except BrokerError as err:
            self.backoff = min(5.0, max(0.1, self.backoff * 2))
            log.warning(
                "poll failed; retrying",
                extra={"pipeline": self.name, "error": str(err)[:200], "retry_in_s": self.backoff},
            )
            stop.wait(self.backoff)
            return []
        self.backoff = 0.0
        return records


def run_loop(
    steps: Steps,
    source: Source,
    stop: threading.Event,
    name: str,
    *,
    clock: Callable[[], float] = time.monotonic,
    idle_poll_s: float = IDLE_POLL_S,
) -> None:
    poll = Poller(name)
    last_second = -float("inf")
    while True:
        stopping = stop.is_set()
        records = [] if stopping else poll(source, stop, steps.poll_timeout(idle_poll_s))
        if not steps.step(records, stopping):
            break
        now = clock()
        if now - last_second >= 1.0:
            last_second = now
            steps.every_second(now)
        if steps.checkpoint_due(now):
            steps.periodic_checkpoint()
    if not steps.finish():  # a stop that leaves no final checkpoint says so, and fails
        raise CheckpointError(
            "stopped without the final checkpoint (see the warning before: it could not "
            "be written); a restart replays what was learned since the last one"
        )


def report_lag(source: Source, hooks: PipelineHooks, name: str) -> int:
    """Consumer lag per owned partition; a partition whose log ends before our position
    was replaced (a broker that lost its data): read its new log. Returns the total lag."""
    total = 0
    for (t, p), (pos, hw) in source.watermarks().items():
        hooks.on_lag(t, p, max(0, hw - pos))
        total += max(0, hw - pos)
        if pos > hw:
            log.warning(
                "partition log ends before our position; reading its new log",
                extra={"pipeline": name, "partition": f"{t}:{p}"},
            )
            source.rewind((t, p))
    return total
