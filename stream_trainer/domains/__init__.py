"""The registry of domains: which kinds of stream a pipeline can learn from.

One module per built-in domain (clicks, ticks, sensors, tabular) declares its schema,
featurizer, model, generator, key field and quality profile; ``custom`` takes the
user's featurizer and model by import path. Pure: importing it imports no torch.

>>> KINDS
('clicks', 'ticks', 'sensors', 'tabular')
>>> get("ticks").key_field
'symbol'
>>> try:
...     get("clickz")
... except ConfigError as err:
...     print(err)
unknown kind 'clickz': should be 'clicks', 'ticks', 'sensors', 'tabular' or 'custom'
"""

from __future__ import annotations

from stream_trainer.domains import clicks, custom, sensors, tabular, ticks
from stream_trainer.domains.base import Domain
from stream_trainer.errors import ConfigError

_REGISTRY: dict[str, Domain] = {
    d.name: d for d in (clicks.DOMAIN, ticks.DOMAIN, sensors.DOMAIN, tabular.DOMAIN, custom.DOMAIN)
}
KINDS: tuple[str, ...] = tuple(name for name, d in _REGISTRY.items() if d.builtin)
ALL_KINDS: tuple[str, ...] = tuple(_REGISTRY)


def expected() -> str:
    """The known kinds, as a sentence: ``'clicks', 'ticks', 'sensors' or 'custom'``."""
    quoted = [repr(k) for k in ALL_KINDS]
    return f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def get(kind: str) -> Domain:
    """The domain of ``kind``; a ConfigError naming the known kinds otherwise."""
    try:
        return _REGISTRY[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown kind {kind!r}: should be {expected()}") from None


__all__ = ["ALL_KINDS", "KINDS", "Domain", "expected", "get"]
