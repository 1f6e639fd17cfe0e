"""What evaluation does differently per event kind, gathered in one table.

Every kind-specific choice of the evaluation (the quality profile, which baselines, how
series are keyed, what our pipeline reports beyond the metrics) reads :func:`traits`,
so that a registry of domains can stand in for :data:`EVAL_KINDS` with a one-line change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EvalKind:
    """One event kind's evaluation traits.

    >>> traits("ticks").task, traits("ticks").trivial
    ('regression', 'returns')
    """

    task: str  # "binary" or "regression": picks the quality profile and the loss
    baselines: str  # "clicks" (River classifiers, Vowpal Wabbit) or "series" (regressors)
    trivial: str | None = None  # series: "returns" (of a price) or "last_value" baselines
    key_field: str | None = None  # the event field that names a series
    feature_key: str | None = None  # our featurizer's input that holds the series' key
    channels: bool = False  # readings per channel: the pipeline takes the stream's channels
    scalar: bool = False  # one number per prediction (else a vector, one per channel)
    anomaly_rate: bool = False  # our pipeline flags anomalies: report the rate of them


EVAL_KINDS: dict[str, EvalKind] = {
    "clicks": EvalKind(task="binary", baselines="clicks"),
    "ticks": EvalKind(
        task="regression",
        baselines="series",
        trivial="returns",
        key_field="symbol",
        feature_key="symbol",
        scalar=True,
    ),
    "sensors": EvalKind(
        task="regression",
        baselines="series",
        trivial="last_value",
        key_field="sensor_id",
        feature_key="sensor",
        channels=True,
        anomaly_rate=True,
    ),
}


def traits(kind: str) -> EvalKind:
    """The evaluation traits of ``kind`` (the lookup a domain registry would replace)."""
    return EVAL_KINDS[kind]
