"""Models: small ``nn.Module``s for the built-in domains and a factory registry. Pure torch."""

from stream_trainer.models.registry import build_model

__all__ = ["build_model"]
