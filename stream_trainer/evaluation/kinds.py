"""What evaluation does differently per event kind: each domain's
:class:`~stream_trainer.domains.base.Evaluation` traits, from the registry."""

from __future__ import annotations

from dataclasses import replace

from stream_trainer import domains
from stream_trainer.domains.base import Evaluation as EvalKind
from stream_trainer.errors import StreamTrainerError

__all__ = ["EVAL_KINDS", "EvalKind", "traits"]

EVAL_KINDS: dict[str, EvalKind] = {
    d.name: replace(d.evaluation, key_field=d.key_field)  # series are keyed like messages
    for d in map(domains.get, domains.ALL_KINDS)
    if d.evaluation is not None
}


def traits(kind: str) -> EvalKind:
    """The evaluation traits of ``kind``.

    >>> traits("ticks").task, traits("ticks").trivial
    ('regression', 'returns')
    """
    try:
        return EVAL_KINDS[kind]
    except KeyError:
        raise StreamTrainerError(
            f"evaluate has no streams of kind {kind!r}; it offers {', '.join(EVAL_KINDS)}"
        ) from None
