"""Metrics of serving and of delayed labels (the joiner), in the daemon's registry.

Kept apart from ``container.py``: a pipeline that serves nothing and joins nothing
exposes none of these series.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_trainer.metrics.container import PREFIX, steps_125

_AGE_BUCKETS = steps_125(0.001, 10.0) + (30.0, 60.0)
_DELAY_BUCKETS = steps_125(0.1, 1000.0) + (3600.0, 86400.0)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def make(cls: type, name: str, doc: str, *labels: str, **kw: Any) -> Any:
            return cls(PREFIX + name, doc, ["pipeline", *labels], registry=registry, **kw)

        self.served_version = make(
            Gauge, "served_model_version", "Model version (updates) of the weights serving scores"
        )
        self.train_to_serve = make(
            Histogram,
            "train_to_serve_age_seconds",
            "Per publication of the weights to serving: seconds since the oldest update it carries",
            buckets=_AGE_BUCKETS,
        )
        self.requests = make(
            Counter,
            "predict_requests",
            "Prediction requests by outcome (ok or a reason)",
            "outcome",
        )
        self.request_seconds = make(
            Histogram,
            "predict_request_duration_seconds",
            "Time to answer a prediction request",
            buckets=steps_125(0.0001, 10.0),
        )
        self.scored = make(Counter, "predict_events", "Events scored by serving", "path")
        # delayed labels
        self.joined = make(
            Counter,
            "impressions_resolved",
            "Impressions whose outcome is known: labelled (a label joined; trained when "
            "the window ends), negative (expired into a negative) or dropped",
            "outcome",
        )
        self.unmatched = make(
            Counter,
            "labels_unmatched",
            "Labels that joined no impression, by reason (early, duplicate, late, orphaned, bad)",
            "reason",
        )
        self.label_delay = make(
            Histogram,
            "label_delay_seconds",
            "Event-time delay from an impression to its label",
            buckets=_DELAY_BUCKETS,
        )
        self.pending = make(
            Gauge, "impressions_pending", "Impressions in their window, waiting for a label"
        )

    def publish_hook(self, pipeline: str, *, set_version: bool = True) -> Any:
        """Per publication: its train-to-serve age, and (``set_version``: requests are
        answered in this process) the version now served. A serving process reports the
        version it has taken itself (:meth:`served`): the gauge never runs ahead of it."""
        version, age = self.served_version.labels(pipeline), self.train_to_serve.labels(pipeline)

        def on_publish(v: int, age_s: float) -> None:
            if set_version:
                version.set(v)
            age.observe(age_s)

        return on_publish

    def served(self, pipeline: str, version: int) -> None:
        self.served_version.labels(pipeline).set(version)

    def on_request(self, pipeline: str, outcome: str, seconds: float, scored: int) -> None:
        self.requests.labels(pipeline, outcome).inc()
        if outcome == "ok":
            self.request_seconds.labels(pipeline).observe(seconds)
        if scored:
            self.scored.labels(pipeline, "http").inc(scored)

    def joiner_hooks(self, pipeline: str) -> JoinerMetrics:
        return JoinerMetrics(self, pipeline)


class JoinerMetrics:
    """What :class:`~stream_trainer.pipeline.joiner.Joiner` reports (its ``hooks``)."""

    def __init__(self, m: ServingMetrics, name: str) -> None:
        self.m, self.name = m, name
        self._delay, self._pending = m.label_delay.labels(name), m.pending.labels(name)
        for outcome in ("labelled", "negative", "dropped"):
            m.joined.labels(name, outcome)
        for reason in ("early", "duplicate", "late", "orphaned", "bad"):
            m.unmatched.labels(name, reason)

    def resolved(self, outcome: str, n: int = 1) -> None:
        self.m.joined.labels(self.name, outcome).inc(n)

    def unmatched(self, reason: str) -> None:
        self.m.unmatched.labels(self.name, reason).inc()

    def delay(self, seconds: float) -> None:
        self._delay.observe(seconds)

    def pending(self, n: int) -> None:
        self._pending.set(n)
