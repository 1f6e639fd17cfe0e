"""Prometheus metrics over a passed-in registry, and the /metrics, /healthz, /readyz server."""

from stream_trainer.metrics.container import Metrics, PipelineMetrics
from stream_trainer.metrics.server import MetricsServer

__all__ = ["Metrics", "MetricsServer", "PipelineMetrics"]
