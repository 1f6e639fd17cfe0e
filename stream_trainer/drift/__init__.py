"""Drift detection (river detectors) and adaptation policies. Pure: floats in, actions out."""

from stream_trainer.drift.monitor import DriftMonitor, InputDriftMonitor, make_detector
from stream_trainer.drift.policy import AdaptationPolicy

__all__ = ["AdaptationPolicy", "DriftMonitor", "InputDriftMonitor", "make_detector"]
