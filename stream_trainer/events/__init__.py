"""Wire schemas and decoding: bytes -> validated event dict, or Rejected(reason)."""

from stream_trainer.events.decode import Rejected, decode, decoder_for

__all__ = ["Rejected", "decode", "decoder_for"]
