"""Wire schemas and decoding: bytes -> validated event dict, or Rejected(reason)."""

from stream_trainer.events.decode import Rejected

__all__ = ["Rejected"]
