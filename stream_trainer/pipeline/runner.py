"""What the service needs of a pipeline, whichever way it runs.

Three runners implement it: :class:`~stream_trainer.pipeline.core.Pipeline` (one
process), :class:`~stream_trainer.pipeline.replicated.ReplicatedPipeline` (one of
several replicas of one model under torchrun) and
:class:`~stream_trainer.pipeline.sharded.ShardedPipeline` (``partitioning: by_key``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Protocol

from stream_trainer.pipeline.hooks import PipelineHooks
from stream_trainer.pipeline.ports import TP, Sink, Source
from stream_trainer.pipeline_config import PipelineSettings


class Runner(Protocol):
    name: str
    spec: PipelineSettings
    hooks: PipelineHooks
    output: str | None  # the output topic, if the pipeline writes one
    failed: str | None  # set by the service when the runner stopped on an error
    restored: bool  # a checkpoint was loaded: its offsets are the truth
    regroup: bool  # a replica left: exit for torchrun to restart the group

    def restore(self) -> bool:
        """Load the newest checkpoint; True when there was one."""
        ...

    def resume_offsets(self, assigned: Sequence[TP] = ()) -> dict[TP, int]:
        """Where each partition resumes, on a (new) assignment."""
        ...

    def on_assign(self, tps: list[TP]) -> None: ...

    def on_revoke(self, tps: list[TP]) -> None: ...

    def ready(self) -> tuple[bool, str]: ...

    def summary(self) -> dict[str, Any]:
        """Counters and losses for the history file."""
        ...

    def run(self, source: Source, sink: Sink | None, stop: threading.Event) -> None: ...


def ready(runner: Runner, source: Source | None) -> tuple[bool, str]:
    """The readiness every runner reports: not failed, and holding partitions."""
    if runner.failed:
        return False, f"{runner.name}: failed: {runner.failed}"
    if source is None or not source.assignment:
        return False, f"{runner.name}: no partitions assigned yet"
    return True, ""
