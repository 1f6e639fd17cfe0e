"""The loop reports what happens through this small interface, never importing Prometheus.

:class:`NullHooks` is the do-nothing default; ``metrics.PipelineMetrics`` is the
Prometheus implementation; tests can record calls with their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PipelineHooks:
    def on_consumed(self, n: int) -> None: ...

    def on_rejected(self, reason: str) -> None: ...

    def on_seeded(self, n: int) -> None: ...

    def on_batch(
        self,
        *,
        trained: int,
        batch_loss: float,
        smoothed_loss: float,
        update_seconds: float,
        event_ages: Sequence[float] | np.ndarray,  # seconds since each trained event was produced
        lr: float,
        model_version: int,
        skipped: str | None,
        clipped: bool = False,
    ) -> None: ...

    def on_anomalies(self, n: int) -> None: ...

    def on_quality(self, values: dict[str, float]) -> None: ...

    def on_mixture(self, weights: dict[str, float]) -> None: ...

    def on_challenger(self, outcome: str) -> None: ...

    def on_race(self, cause: str, active: bool) -> None:
        """A challenger started (``active``) or ended racing; ``cause``: ``drift`` (the
        drift policy's) or ``config`` (a new model shape: pipeline/reshape.py)."""

    def on_drift(self, detector: str, timestamp: float) -> None: ...

    def on_input_drift(self, timestamp: float) -> None: ...

    def on_sync(self, kind: str, seconds: float) -> None: ...

    def on_sync_check(self, equal: bool) -> None: ...

    def on_stall(self) -> None: ...

    def on_keyed_models(self, n: int) -> None: ...

    def on_checkpoint(self, seconds: float, timestamp: float) -> None: ...

    def on_checkpoint_failed(self) -> None: ...

    def on_offset_reset(self, topic: str, partition: int) -> None: ...

    def on_lag(self, topic: str, partition: int, lag: int) -> None: ...

    def on_partitions(self, assigned: list[tuple[str, int]]) -> None: ...


class NullHooks(PipelineHooks):
    """Ignores everything."""
