"""All metric families in one place, built from a passed-in ``CollectorRegistry``.

Names follow Prometheus conventions: prefix ``stream_trainer_``, base units
(seconds), ``_total`` counters, low-cardinality labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from stream_trainer import __version__
from stream_trainer.events import reasons
from stream_trainer.hooks import PipelineHooks

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_UPDATE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "stream_trainer_"
        r = registry
        Info(p + "build", "stream-trainer version", registry=r).info({"version": __version__})
        self.consumed = Counter(
            p + "events_consumed", "Events read from Kafka", ["pipeline"], registry=r
        )
        self.trained = Counter(
            p + "events_trained", "Events whose example reached an update", ["pipeline"], registry=r
        )
        self.rejected = Counter(
            p + "events_rejected", "Events refused, by reason", ["pipeline", "reason"], registry=r
        )
        self.seeded = Counter(
            p + "events_seeded",
            "Events that only seeded per-key state (a key's warm-up)",
            ["pipeline"],
            registry=r,
        )
        self.updates = Counter(p + "updates", "Optimizer updates applied", ["pipeline"], registry=r)
        self.skipped = Counter(
            p + "updates_skipped",
            "Updates refused by a guard, by reason",
            ["pipeline", "reason"],
            registry=r,
        )
        self.loss = Gauge(
            p + "loss",
            "Prequential loss (before the update): last batch, and smoothed over ~1000 events",
            ["pipeline", "window"],
            registry=r,
        )
        self.lr = Gauge(p + "learning_rate", "Current learning rate", ["pipeline"], registry=r)
        self.model_version = Gauge(
            p + "model_version", "Updates applied over the model's life", ["pipeline"], registry=r
        )
        self.drift = Counter(
            p + "drift_detected",
            "Drift detections (loss going up)",
            ["pipeline", "detector"],
            registry=r,
        )
        self.last_drift = Gauge(
            p + "last_drift_timestamp_seconds",
            "Unix time of the last drift detection",
            ["pipeline"],
            registry=r,
        )
        self.anomalies = Counter(
            p + "anomalies", "Events scored as anomalies", ["pipeline"], registry=r
        )
        self.update_seconds = Histogram(
            p + "update_seconds",
            "Duration of one training step",
            ["pipeline"],
            buckets=_UPDATE_BUCKETS,
            registry=r,
        )
        self.freshness = Histogram(
            p + "event_to_update_seconds",
            "Time from an event's Kafka timestamp to the update that learned from it",
            ["pipeline"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.last_update = Gauge(
            p + "last_update_timestamp_seconds",
            "Unix time of the last optimizer update",
            ["pipeline"],
            registry=r,
        )
        self.lag = Gauge(
            p + "consumer_lag",
            "Messages behind the partition's high watermark",
            ["pipeline", "topic", "partition"],
            registry=r,
        )
        self.checkpoints = Counter(
            p + "checkpoints", "Checkpoints written", ["pipeline"], registry=r
        )
        self.checkpoint_seconds = Histogram(
            p + "checkpoint_seconds", "Time to write one checkpoint", ["pipeline"], registry=r
        )
        self.last_checkpoint = Gauge(
            p + "last_checkpoint_timestamp_seconds",
            "Unix time of the last durable checkpoint",
            ["pipeline"],
            registry=r,
        )
        self.assigned = Gauge(
            p + "assigned_partitions",
            "Partitions assigned to this pipeline",
            ["pipeline"],
            registry=r,
        )

    def pipeline(self, name: str, detector: str = "none") -> PipelineMetrics:
        return PipelineMetrics(self, name, detector)


class PipelineMetrics(PipelineHooks):
    """The Prometheus side of :class:`~stream_trainer.hooks.PipelineHooks` for one pipeline."""

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
        self._lag_keys: set[tuple[str, str]] = set()
        # Expose every series from the start, so dashboards and alerts see zeros, not gaps.
        for reason in reasons.ALL:
            m.rejected.labels(name, reason)
        m.checkpoints.labels(name)
        m.anomalies.labels(name)
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
        event_ages: list[float],
        lr: float,
        model_version: int,
        skipped: str | None,
    ) -> None:
        self._trained.inc(trained)
        if not skipped:  # a refused batch's loss is non-finite: keep the last good value
            self._loss_batch.set(batch_loss)
            self._loss_smoothed.set(smoothed_loss)
        self._update_seconds.observe(update_seconds)
        self.m.lr.labels(self.name).set(lr)
        self.m.model_version.labels(self.name).set(model_version)
        if skipped:
            self.m.skipped.labels(self.name, skipped).inc()
        else:
            self._updates.inc()
            self.m.last_update.labels(self.name).set_to_current_time()
        for age in event_ages:
            self._freshness.observe(age)

    def on_anomalies(self, n: int) -> None:
        self.m.anomalies.labels(self.name).inc(n)

    def on_drift(self, detector: str, timestamp: float) -> None:
        self.m.drift.labels(self.name, detector).inc()
        self.m.last_drift.labels(self.name).set(timestamp)

    def on_checkpoint(self, seconds: float, timestamp: float) -> None:
        self.m.checkpoints.labels(self.name).inc()
        self.m.checkpoint_seconds.labels(self.name).observe(seconds)
        self.m.last_checkpoint.labels(self.name).set(timestamp)

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        self._lag_keys.add((topic, str(partition)))
        self.m.lag.labels(self.name, topic, str(partition)).set(lag)

    def on_partitions(self, assigned: list[tuple[str, int]]) -> None:
        self.m.assigned.labels(self.name).set(len(assigned))
        keep = {(t, str(p)) for t, p in assigned}
        for key in self._lag_keys - keep:  # a revoked partition's lag is no longer ours
            self.m.lag.remove(self.name, *key)
        self._lag_keys &= keep
