"""The work after an applied update: the smoothed loss, quality, the drift monitors and
the adaptation policy, the replay buffer, and a racing challenger."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from stream_trainer.drift import AdaptationPolicy, DriftMonitor, InputDriftMonitor
from stream_trainer.learner.quality import Quality
from stream_trainer.learner.replay import ReplayBuffer
from stream_trainer.pipeline import reshape
from stream_trainer.pipeline.hooks import PipelineHooks

log = logging.getLogger(__name__)

SMOOTHING_EVENTS = 1000.0


class AfterUpdate:
    """Mixed into :class:`~stream_trainer.pipeline.core.Pipeline`, which owns these parts."""

    name: str
    hooks: PipelineHooks
    learner: Any
    quality: Quality
    policy: AdaptationPolicy
    monitor: DriftMonitor | None
    input_monitor: InputDriftMonitor | None
    replay: ReplayBuffer | None
    smoothed_loss: float
    last_batch_loss: float
    reshape: Any = None  # a model of the config's new shape racing (pipeline/reshape.py)

    def learned(self, fb: Any, res: Any, extra: Mapping[str, np.ndarray]) -> None:
        batch_loss = self.last_batch_loss = res.mean_loss
        a = 1.0 - (1.0 - 1.0 / SMOOTHING_EVENTS) ** len(fb)
        self.smoothed_loss = (
            batch_loss
            if math.isnan(self.smoothed_loss)
            else self.smoothed_loss + a * (batch_loss - self.smoothed_loss)
        )
        pred, target = fb.raw_units(res.outputs)
        self.quality.update(pred, target, res.losses, extra.get("anomaly"))
        if res.weights:
            self.hooks.on_mixture(res.weights)
        self.policy.after_update(self.learner)
        if self.monitor is not None and self.monitor.update(res.losses):
            self.drift_detected()
            self.hooks.on_drift(self.monitor.detector_name, time.time())
            log.info(
                "drift detected",
                extra={
                    "pipeline": self.name,
                    "detector": self.monitor.detector_name,
                    "loss": round(batch_loss, 5),
                    "actions": ",".join(self.policy.actions),
                },
            )
        if self.input_monitor is not None and self.input_monitor.update(fb.inputs):
            self.hooks.on_input_drift(time.time())
            log.info("input drift detected", extra={"pipeline": self.name})
        if self.replay is not None:
            self.replay.add(
                fb.inputs, fb.targets, fb.keys if getattr(self, "keyed", False) else None
            )
        self._compete(fb, res.losses)
        if self.reshape is not None:
            reshape.step(self, fb, res.losses)

    def drift_detected(self) -> None:
        """Act on a detection now (replicas: in the next round, all together)."""
        self.policy.on_drift(self.learner)
        if self.policy.race is not None:
            self.hooks.on_race("drift", True)

    def _compete(self, fb: Any, losses: np.ndarray) -> None:
        """A running challenger learns from the same batch; promote or drop it."""
        keys = fb.keys if getattr(self, "keyed", False) else None
        self._settled(self.policy.compete(fb.inputs, fb.targets, losses, keys=keys))

    def _settled(self, outcome: tuple[str, Any] | None) -> None:
        """A race ended: the winner (if any) becomes the champion."""
        if outcome is None:
            return
        verdict, winner = outcome
        if winner is not None:
            winner.updates = self.learner.updates  # the model version keeps counting up
            self.learner = winner
        self.hooks.on_challenger(verdict)
        self.hooks.on_race("drift", False)
        log.info(
            f"challenger {verdict}",
            extra={"pipeline": self.name, "model_version": self.learner.updates},
        )
