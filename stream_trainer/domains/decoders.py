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

from collections.abc import Callable, Mapping, Sequence
from itertools import repeat
from typing import Any

import msgspec

from stream_trainer import domains
from stream_trainer.events import reasons as R
from stream_trainer.events.decode import Decoded, Rejected, _Reject, decoder
from stream_trainer.events.mapping import compile_mapping, named, paths

# a whole poll's values (and, for ``ts: kafka``, their records' timestamps in ms)
PollDecoder = Callable[..., list[Decoded]]


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
    kind: str,
    *,
    channels: Sequence[str] = (),
    max_bytes: int = 1 << 20,
    wire: Mapping[str, Any] | None = None,
) -> PollDecoder:
    """``(values, timestamps=None) -> [event or Rejected]``, one per value, as
    :func:`decoder_for` would give one at a time. ``wire``: the pipeline's format and
    field mapping (``PipelineSettings.wire()``); none: JSON in the kind's own shape."""
    if wire is not None and (wire.get("format") == "avro" or wire.get("fields")):
        return _mapped(kind, channels, max_bytes, wire)
    slow = decoder_for(kind, channels=channels, max_bytes=max_bytes)
    fast = domains.get(kind).fast
    if fast is None:  # custom: any JSON object, checked by the user's featurizer
        return lambda values, timestamps=None: [slow(v) for v in values]
    dec, convert = fast(channels)
    decode = dec.decode
    failed = (msgspec.DecodeError, RecursionError)  # ValidationError is a DecodeError

    def run(
        values: Sequence[bytes | None], timestamps: Sequence[int] | None = None
    ) -> list[Decoded]:
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


def mapped_check(
    kind: str, channels: Sequence[str], fields: Mapping[str, Any] | None
) -> Callable[[Any, int | None], dict[str, Any]]:
    """The user's parsed event (and its record's timestamp) -> the kind's event, through
    the ``fields:`` mapping and the kind's checks; raises ``_Reject`` with the user's path
    in the detail."""
    d = domains.get(kind)
    check = d.schema(channels)
    transform = compile_mapping(fields or {}, d.mapped, d.optional)
    where = paths(fields or {})

    def run(doc: Any, stamp: int | None) -> dict[str, Any]:
        ev = transform(doc, stamp)  # its rejects name the path already
        try:
            return check(ev)
        except _Reject as rej:
            raise _Reject(rej.rejected.reason, named(rej.rejected.detail, where)) from None

    return run


def _mapped(
    kind: str, channels: Sequence[str], max_bytes: int, wire: Mapping[str, Any]
) -> PollDecoder:
    """JSON with a field mapping, or Avro (with one or not): parse (msgspec's untyped JSON
    decoder in C, or fastavro), map, then the kind's msgspec types check in C what they
    can; what they refuse takes the exact checks for the reason, as in :func:`batch_decoder`."""
    d = domains.get(kind)
    check = mapped_check(kind, channels, wire.get("fields"))
    fields = wire.get("fields")
    # no mapping (Avro in the kind's own shape): the record is the event to check
    transform = compile_mapping(fields, d.mapped, d.optional) if fields else lambda doc, stamp: doc
    typed: Any = None
    if d.fast is not None:
        dec, convert = d.fast(channels)
        typed = (dec.type, convert)
    refused = (_Reject, msgspec.ValidationError, RecursionError)

    def one(doc: dict[str, Any], stamp: int | None) -> Decoded:
        if typed is not None:
            try:
                ev = typed[1](msgspec.convert(transform(doc, stamp), typed[0]))
            except refused:
                ev = None
            if ev is not None:
                return ev
        try:
            return check(doc, stamp)
        except _Reject as rej:
            return rej.rejected
        except RecursionError:
            return Rejected(R.TOO_DEEP, "nesting too deep")

    if wire.get("format") == "avro":
        return _avro_poll(wire["avro"], max_bytes, one)
    stamp_now: list[int | None] = [None]
    slow = decoder(lambda doc: check(doc, stamp_now[0]), max_bytes=max_bytes)
    parse = msgspec.json.Decoder().decode
    failed = (msgspec.DecodeError, RecursionError)

    def run(
        values: Sequence[bytes | None], timestamps: Sequence[int] | None = None
    ) -> list[Decoded]:
        out: list[Decoded] = []
        for v, stamp in zip(values, timestamps or repeat(None), strict=False):
            if v and len(v) <= max_bytes:
                try:
                    doc = parse(v)
                except failed:
                    doc = None
                if type(doc) is dict:
                    out.append(one(doc, stamp))
                    continue
            stamp_now[0] = stamp  # what msgspec refused: decode.py's framing says why
            out.append(slow(v))
        return out

    return run


def _avro_poll(
    avro: Mapping[str, Any], max_bytes: int, one: Callable[[dict[str, Any], int | None], Decoded]
) -> PollDecoder:
    from stream_trainer.events import avro as A

    if avro.get("schemas"):
        read = A.reader(schemas=A.load_schemas(avro["schemas"]))
    else:
        read = A.reader(schema=A.load_schema(avro["schema"]))

    def run(
        values: Sequence[bytes | None], timestamps: Sequence[int] | None = None
    ) -> list[Decoded]:
        out: list[Decoded] = []
        for v, stamp in zip(values, timestamps or repeat(None), strict=False):
            if not v:
                out.append(Rejected(R.EMPTY, "empty message"))
            elif len(v) > max_bytes:
                out.append(Rejected(R.TOO_LARGE, f"{len(v)} bytes > {max_bytes}"))
            elif type(doc := read(v)) is dict:
                out.append(one(doc, stamp))
            elif isinstance(doc, Rejected):
                out.append(doc)
            else:
                out.append(Rejected(R.NOT_OBJECT, f"got {type(doc).__name__} (not a record)"))
        return out

    return run
