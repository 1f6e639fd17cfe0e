"""A kind's decoders: its domain's schema framed by events/decode.py (one message at a
time) and by events/fast.py's msgspec types (a whole poll). Here, above events/, because
only the registry knows a kind's schema; events/ stays free of the domains.

>>> decode(b'{"ts": 1.7e9, "symbol": "AAPL", "price": 10.5}', "ticks")
{'ts': 1700000000.0, 'symbol': 'AAPL', 'price': 10.5, 'volume': 0.0}
>>> decode(b'{"ts": 1.7e9, "symbol": "AAPL", "price": NaN}', "ticks")
Rejected(reason='non_finite', detail='NaN is not allowed')
>>> decode(b'[1, 2]', "clicks").reason
'not_object'
>>> run = batch_decoder("ticks")
>>> for out in run([b'{"ts": 1.7e9, "symbol": "A", "price": 10.5}', b'{"ts": 1.7e9, "price": 1}']):
...     print(out)
{'ts': 1700000000.0, 'symbol': 'A', 'price': 10.5, 'volume': 0.0}
Rejected(reason='missing_field', detail='symbol')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from stream_trainer import domains
from stream_trainer.events.decode import Decoded, Rejected, decoder


def decoder_for(
    kind: str, *, channels: Sequence[str] = (), max_bytes: int = 1 << 20
) -> Callable[[bytes | None], Decoded]:
    """Build a decoder for one domain (see stream_trainer.domains). ``channels`` fixes
    the sensor channels."""
    return decoder(domains.get(kind).schema(channels), max_bytes=max_bytes)


def decode(raw: bytes | None, kind: str) -> dict[str, Any] | Rejected:
    """Decode one message with the default settings of ``kind``."""
    return decoder_for(kind)(raw)


def batch_decoder(
    kind: str, *, channels: Sequence[str] = (), max_bytes: int = 1 << 20
) -> Callable[[Sequence[bytes | None]], list[Decoded]]:
    """``values -> [event or Rejected]``, one per value, as :func:`decoder_for` would give
    one at a time."""
    slow = decoder_for(kind, channels=channels, max_bytes=max_bytes)
    fast = domains.get(kind).fast
    if fast is None:  # custom: any JSON object, checked by the user's featurizer
        return lambda values: [slow(v) for v in values]
    dec, convert = fast(channels)
    decode = dec.decode
    failed = (msgspec.DecodeError, RecursionError)  # ValidationError is a DecodeError

    def run(values: Sequence[bytes | None]) -> list[Decoded]:
        out: list[Decoded] = []
        append = out.append
        for v in values:
            if v and len(v) <= max_bytes:
                try:
                    ev = convert(decode(v))
                except failed:
                    ev = None
                if ev is not None:
                    append(ev)
                    continue
            append(slow(v))
        return out

    return run
