"""Fakes for the pipeline's edges: a list source with a commit log, a list sink, a clock."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from stream_trainer.events.decode import Rejected
from stream_trainer.pipeline.ports import TP, Record


class ListSource:
    """Serves records from in-memory partitions, from the offsets given at assignment."""

    def __init__(
        self,
        partitions: Mapping[TP, list[bytes | None]],
        start: Mapping[TP, int],
        batch: int = 64,
        on_commit: Any = None,
    ) -> None:
        self.data = {tp: list(v) for tp, v in partitions.items()}
        self.pos = {tp: start.get(tp, 0) for tp in self.data}
        self.assignment = sorted(self.data)
        self.batch = batch
        self.commits: list[dict[TP, int]] = []
        self.on_commit = on_commit
        self.polls = 0

    def exhausted(self) -> bool:
        return all(self.pos[tp] >= len(v) for tp, v in self.data.items())

    def poll(self, timeout_s: float, max_records: int | None = None) -> list[Record]:
        self.polls += 1
        out: list[Record] = []
        for (t, p), values in self.data.items():
            lo = self.pos[(t, p)]
            hi = min(len(values), lo + self.batch)
            out += [Record(t, p, o, 0, None, values[o]) for o in range(lo, hi)]
            self.pos[(t, p)] = hi
        return out

    def commit(self, offsets: Mapping[TP, int], timeout_ms: int | None = None) -> None:
        if self.on_commit is not None:
            self.on_commit(dict(offsets))
        self.commits.append(dict(offsets))

    def watermarks(self) -> dict[TP, tuple[int, int]]:
        return {tp: (self.pos[tp], len(v)) for tp, v in self.data.items()}

    def rewind(self, tp: TP) -> None:
        self.pos[tp] = 0

    def close(self) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.dead: list[dict[str, Any]] = []
        self.outputs: list[tuple[str, dict[str, Any]]] = []
        self.flushes = 0

    def dead_letter(self, topic: str, rec: Record, why: Rejected) -> None:
        self.dead.append(
            {
                "topic": topic,
                "raw": rec.value,
                "reason": why.reason,
                "offset": rec.offset,
                "partition": rec.partition,
            }
        )

    def output(self, topic: str, key: str | None, doc: Mapping[str, Any]) -> None:
        self.outputs.append((topic, json.loads(json.dumps(doc))))

    def flush(self, timeout_s: float = 30.0) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass


class CheckedThread(threading.Thread):
    """A thread whose exception (a failed assertion too) ``join`` raises again in the
    test's own thread: pytest only warns about one raised in another thread."""

    def __init__(self, target: Callable[[], object], name: str | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as err:  # handed to join(), in the test's thread
            self.error = err

    def join(self, timeout: float | None = 60.0) -> None:
        super().join(timeout)
        if self.is_alive():
            raise AssertionError(f"thread {self.name} still running after {timeout} s")
        if self.error is not None:
            raise self.error


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> None:
    """Poll ``condition`` until it holds. ``timeout_s`` is a generous deadline for a stuck
    wait, never a duration the test measures (those belong to the benchmarks)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout_s} s")
        time.sleep(0.05)


def run_until(
    p: Any, source: ListSource, sink: ListSink, stop_after_polls: int | None = None
) -> None:
    """Run the real loop; stop once the source is drained (or after N polls)."""
    stop = threading.Event()
    orig = source.poll

    def poll(timeout_s, max_records=None):
        out = orig(timeout_s, max_records)
        if (stop_after_polls is not None and source.polls >= stop_after_polls) or (
            not out and source.exhausted()
        ):
            stop.set()
        return out

    source.poll = poll  # type: ignore[method-assign]
    p.run(source, sink, stop, idle_poll_s=0.0)


def tick_learner(lr: float = 0.01) -> Any:
    """A small, seeded ticks learner for unit tests."""
    import torch

    from stream_trainer.learner import Learner
    from stream_trainer.models.forecast import TickModel

    torch.manual_seed(0)
    return Learner(TickModel(window=4, channels=1, key_buckets=8), "regression", lr=lr)


def tick_batch(n: int = 32, seed: int = 0, coef: float = 0.5) -> tuple[dict[str, Any], Any]:
    """Windows of 4 returns and the next one, ``coef`` times the last: learnable."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return {"window": x, "symbol": rng.integers(1, 8, n)}, (coef * x[:, -1]).astype(np.float32)
