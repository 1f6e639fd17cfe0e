"""The prequential (test-then-train) step, optimizers and guards. Pure torch."""

from stream_trainer.learner.device import pick_device
from stream_trainer.learner.prequential import Learner
from stream_trainer.learner.result import StepResult

__all__ = ["Learner", "StepResult", "pick_device"]
