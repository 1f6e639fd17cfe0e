"""The prequential (test-then-train) step, optimizers and guards. Pure torch."""

from stream_trainer.learner.prequential import Learner, StepResult, pick_device

__all__ = ["Learner", "StepResult", "pick_device"]
