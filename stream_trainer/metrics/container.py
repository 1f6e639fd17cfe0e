"""All metric families in one place, built from a passed-in ``CollectorRegistry``.

Names follow Prometheus conventions: prefix ``stream_trainer_``, base units
(seconds), ``_total`` counters, low-cardinality labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream_trainer import __version__
from stream_trainer.events import reasons
from stream_trainer.learner.result import SKIP_REASONS
from stream_trainer.pipeline.hooks import PipelineHooks

PREFIX = "stream_trainer_"


def steps_125(lo: float, hi: float) -> tuple[float, ...]:
    """Histogram bounds in 1-2.5-5 steps from ``lo`` to ``hi``.

    >>> steps_125(0.001, 0.01)
    (0.001, 0.0025, 0.005, 0.01)
    """
    out: list[float] = []
    decade = lo
    while decade <= hi * 1.0001:
        out += [round(decade * m, 10) for m in (1, 2.5, 5) if decade * m <= hi * 1.0001]
        decade *= 10
    return tuple(out)


def observe_many(h: Any, values: Sequence[float] | np.ndarray) -> None:
    """``h.observe(v)`` for every value, by bucket counts: one ``inc`` per bucket that
    got any and one for the sum, not a bucket search and lock per value (the freshness
    histogram sees every trained event: per value it was ~2 us an event). Where the
    client's histogram is not laid out as expected, one value at a time.

    >>> r = CollectorRegistry()
    >>> a = Histogram("a", "a", registry=r, buckets=(0.1, 1.0))
    >>> b = Histogram("b", "b", registry=r, buckets=(0.1, 1.0))
    >>> xs = [0.05, 0.1, 0.5, 2.0, 2.0]
    >>> observe_many(a, xs); _ = [b.observe(x) for x in xs]
    >>> [r.get_sample_value("a_bucket", {"le": le}) for le in ("0.1", "1.0", "+Inf")]
    [2.0, 3.0, 5.0]
    >>> [r.get_sample_value(f"{n}_sum") for n in "ab"] == [4.65, 4.65]
    True
    """
    bounds, buckets, total = (getattr(h, k, None) for k in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            h.observe(float(v))
        return
    x = np.asarray(values, dtype=np.float64)
    if not x.size:
        return
    counts = np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts).tolist():
        buckets[i].inc(int(counts[i]))
    total.inc(float(x.sum()))


_LATENCY_BUCKETS = steps_125(0.001, 10.0) + (30.0, 60.0)
_UPDATE_BUCKETS = steps_125(0.0001, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        Info(PREFIX + "build", "stream-trainer version", registry=registry).info(
            {"version": __version__}
        )
        self._events()
        self._learning()
        self._replicas()
        self._operations()
        self._checkpoints_and_broker()

    def _make(self, cls: type, name: str, doc: str, *labels: str, **kw: Any) -> Any:
        """A metric labelled by pipeline (and ``labels``), in this registry."""
        return cls(PREFIX + name, doc, ["pipeline", *labels], registry=self.registry, **kw)

    def _events(self) -> None:
        self.consumed = self._make(Counter, "events_consumed", "Events read from Kafka")
        self.trained = self._make(
            Counter, "events_trained", "Events whose example reached an update"
        )
        self.rejected = self._make(
            Counter, "events_rejected", "Events refused, by reason", "reason"
        )
        self.seeded = self._make(
            Counter, "events_seeded", "Events that only seeded per-key state (a key's warm-up)"
        )

    def _learning(self) -> None:
        self.updates = self._make(Counter, "updates", "Optimizer updates applied")
        self.skipped = self._make(
            Counter, "updates_skipped", "Updates refused by a guard, by reason", "reason"
        )
        self.loss = self._make(
            Gauge,
            "loss",
            "Prequential loss (before the update): last batch, and smoothed over ~1000 events",
            "window",
        )
        self.lr = self._make(Gauge, "learning_rate", "Current learning rate")
        self.model_version = self._make(
            Gauge, "model_version", "Updates applied over the model's life"
        )
        self.drift = self._make(
            Counter, "drift_detected", "Drift detections (loss going up)", "detector"
        )
        self.last_drift = self._make(
            Gauge, "last_drift_timestamp_seconds", "Unix time of the last drift detection"
        )
        self.input_drift = self._make(
            Counter,
            "input_drift_detected",
            "Input drift detections (float feature statistics moved)",
        )
        self.anomalies = self._make(Counter, "anomalies", "Events scored as anomalies")

    def _replicas(self) -> None:
        self.sync_seconds = self._make(
            Histogram,
            "sync_duration_seconds",
            "Replicas: time in one collective (round, gradients, average, broadcast)",
            "kind",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )
        self.sync_checks = self._make(
            Counter, "sync_checks", "Replicas: weight fingerprints compared", "result"
        )
        self.keyed_models = self._make(
            Gauge, "keyed_models", "by_key pipelines: models held by this process's shards"
        )
        self.stalls = self._make(
            Counter,
            "replica_stalls",
            "Replicas: collectives that failed (a replica stalled or left)",
        )

    def _operations(self) -> None:
        self.challenger = self._make(
            Counter,
            "challenger_outcomes",
            "Challengers (drift action, new model shape) promoted to champion or dropped",
            "outcome",
        )
        self.racing = self._make(
            Gauge,
            "challenger_racing",
            "1 while a challenger races the champion: cause drift (the drift action) or "
            "config (a model of the config's new shape beside the restored one)",
            "cause",
        )
        self.quality = self._make(
            Gauge,
            "quality",
            "Prequential quality over the last 10k examples (clicks: log_loss, auc, "
            "mean_predicted, observed_rate, calibration_gap; ticks: mse, mae, "
            "directional_accuracy; sensors: mse, normalized_mse, anomaly_rate)",
            "metric",
        )
        self.mixture_weight = self._make(
            Gauge,
            "mixture_weight",
            "Weight of each expert in the online mixture that is scored and emitted: model, "
            "and the kind's trivial baselines (clicks: constant_rate, recent_rate; ticks: "
            "zero_return, last_return; sensors: last_value)",
            "expert",
        )
        self.update_seconds = self._make(
            Histogram, "update_seconds", "Duration of one training step", buckets=_UPDATE_BUCKETS
        )
        self.freshness = self._make(
            Histogram,
            "event_to_update_seconds",
            "Time from an event's Kafka timestamp to the update that learned from it",
            buckets=_LATENCY_BUCKETS,
        )
        self.last_update = self._make(
            Gauge, "last_update_timestamp_seconds", "Unix time of the last optimizer update"
        )
        self.lag = self._make(
            Gauge,
            "consumer_lag",
            "Messages behind the partition's high watermark",
            "topic",
            "partition",
        )

    def _checkpoints_and_broker(self) -> None:
        self.checkpoints = self._make(Counter, "checkpoints", "Checkpoints written")
        self.checkpoint_seconds = self._make(
            Histogram, "checkpoint_seconds", "Time to write one checkpoint"
        )
        self.last_checkpoint = self._make(
            Gauge, "last_checkpoint_timestamp_seconds", "Unix time of the last durable checkpoint"
        )
        self.clipped = self._make(
            Counter, "updates_clipped", "Updates whose gradient norm was clipped"
        )
        self.checkpoint_failures = self._make(
            Counter,
            "checkpoint_failures",
            "Checkpoints postponed (outputs undeliverable, or the write failed)",
        )
        self.offset_resets = self._make(
            Counter,
            "offset_resets",
            "Partitions whose log went back to an earlier offset (broker lost data)",
            "topic",
            "partition",
        )
        self.replica = Gauge(
            PREFIX + "replica",
            "1, labelled with this process's rank and the number of replicas (torchrun)",
            ["rank", "world_size"],
            registry=self.registry,
        )
        self.broker_up = Gauge(
            PREFIX + "broker_up",
            "1 when a bootstrap server answered the last probe, else 0",
            registry=self.registry,
        )
        self.assigned = self._make(
            Gauge, "assigned_partitions", "Partitions assigned to this pipeline"
        )

    def pipeline(self, name: str, detector: str = "none") -> PipelineMetrics:
        return PipelineMetrics(self, name, detector)


class PipelineMetrics(PipelineHooks):
    """The Prometheus side of :class:`~stream_trainer.pipeline.hooks.PipelineHooks`."""

    def __init__(self, m: Metrics, name: str, detector: str = "none") -> None:
        self.m, self.name = m, name
        self._consumed = m.consumed.labels(name)
        self._trained = m.trained.labels(name)
        self._seeded = m.seeded.labels(name)
        self._updates = m.updates.labels(name)
        self._loss_batch = m.loss.labels(name, "batch")
        self._loss_smoothed = m.loss.labels(name, "smoothed")
        self._update_seconds = m.update_seconds.labels(name)
        self._freshness = m.freshness.labels(name)
        self._lr = m.lr.labels(name)
        self._model_version = m.model_version.labels(name)
        self._last_update = m.last_update.labels(name)
        self._clipped = m.clipped.labels(name)
        self._lag_keys: set[tuple[str, str]] = set()
        # Expose every series from the start, so dashboards and alerts see zeros, not gaps.
        for reason in reasons.ALL:
            m.rejected.labels(name, reason)
        for reason in SKIP_REASONS:
            m.skipped.labels(name, reason)
        m.checkpoints.labels(name)
        m.checkpoint_failures.labels(name)
        m.anomalies.labels(name)
        m.input_drift.labels(name)
        if detector != "none":
            m.drift.labels(name, detector)

    def on_consumed(self, n: int) -> None:
        self._consumed.inc(n)

    def on_rejected(self, reason: str) -> None:
        self.m.rejected.labels(self.name, reason).inc()

    def on_seeded(self, n: int) -> None:
        self._seeded.inc(n)

    def on_batch(
        self,
        *,
        trained: int,
        batch_loss: float,
        smoothed_loss: float,
        update_seconds: float,
        event_ages: Sequence[float] | np.ndarray,
        lr: float,
        model_version: int,
        skipped: str | None,
        clipped: bool = False,
    ) -> None:
        self._trained.inc(trained)
        if not skipped:  # a refused batch's loss is non-finite: keep the last good value
            self._loss_batch.set(batch_loss)
            self._loss_smoothed.set(smoothed_loss)
        self._update_seconds.observe(update_seconds)
        self._lr.set(lr)
        self._model_version.set(model_version)
        if skipped:
            self.m.skipped.labels(self.name, skipped).inc()
        else:
            self._updates.inc()
            self._last_update.set_to_current_time()
        if clipped:
            self._clipped.inc()
        observe_many(self._freshness, event_ages)

    def on_anomalies(self, n: int) -> None:
        self.m.anomalies.labels(self.name).inc(n)

    def on_challenger(self, outcome: str) -> None:
        self.m.challenger.labels(self.name, outcome).inc()

    def on_race(self, cause: str, active: bool) -> None:
        self.m.racing.labels(self.name, cause).set(1.0 if active else 0.0)

    def on_quality(self, values: dict[str, float]) -> None:
        for metric, value in values.items():
            self.m.quality.labels(self.name, metric).set(value)

    def on_mixture(self, weights: dict[str, float]) -> None:
        for expert, w in weights.items():
            self.m.mixture_weight.labels(self.name, expert).set(w)

    def on_drift(self, detector: str, timestamp: float) -> None:
        self.m.drift.labels(self.name, detector).inc()
        self.m.last_drift.labels(self.name).set(timestamp)

    def on_sync(self, kind: str, seconds: float) -> None:
        self.m.sync_seconds.labels(self.name, kind).observe(seconds)

    def on_sync_check(self, equal: bool) -> None:
        self.m.sync_checks.labels(self.name, "equal" if equal else "different").inc()

    def on_keyed_models(self, n: int) -> None:
        self.m.keyed_models.labels(self.name).set(n)

    def on_stall(self) -> None:
        self.m.stalls.labels(self.name).inc()

    def on_input_drift(self, timestamp: float) -> None:
        self.m.input_drift.labels(self.name).inc()

    def on_checkpoint(self, seconds: float, timestamp: float) -> None:
        self.m.checkpoints.labels(self.name).inc()
        self.m.checkpoint_seconds.labels(self.name).observe(seconds)
        self.m.last_checkpoint.labels(self.name).set(timestamp)

    def on_checkpoint_failed(self) -> None:
        self.m.checkpoint_failures.labels(self.name).inc()

    def on_offset_reset(self, topic: str, partition: int) -> None:
        self.m.offset_resets.labels(self.name, topic, str(partition)).inc()

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        self._lag_keys.add((topic, str(partition)))
        self.m.lag.labels(self.name, topic, str(partition)).set(lag)

    def on_partitions(self, assigned: list[tuple[str, int]]) -> None:
        self.m.assigned.labels(self.name).set(len(assigned))
        keep = {(t, str(p)) for t, p in assigned}
        for key in self._lag_keys - keep:  # a revoked partition's lag is no longer ours
            self.m.lag.remove(self.name, *key)
        self._lag_keys &= keep
