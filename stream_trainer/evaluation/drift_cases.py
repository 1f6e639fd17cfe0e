"""The drift suite's streams, whose change points are known, each with one fixed online
learner's per-event error — prequential (predict, then learn), never reset by a
detection, so that every detector sees exactly the same stream:

* river's synthetic generators with their drift positions (SEA, STAGGER and Agrawal with
  abrupt concept changes, Hyperplane with a gradual one, FriedmanDrift for regression):
  River's LogisticRegression (0/1 error) or a Hoeffding tree behind a StandardScaler
  (a one-hot encoder for STAGGER's categories), with the features for the input monitor;
* our producers' drifts (clicks, ticks, sensors): our pipeline, its drift monitor off,
  giving its per-event loss.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_trainer.evaluation.offline import pipeline_settings, run_ours
from stream_trainer.evaluation.streams import generated


@dataclass
class Change:
    """A known change point; ``width`` 0 for an abrupt one."""

    position: int
    width: int = 0  # 0: abrupt; else the transition's length, centred on position


@dataclass
class Case:
    """One stream of the suite: the learner's per-event error and the true changes."""

    name: str
    source: str
    errors: np.ndarray  # one per event
    changes: list[Change]
    features: np.ndarray | None = None  # per event, for the input monitor
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


# ---- river's synthetic streams --------------------------------------------------------------
def _abrupt(make: Callable[[int], Any], positions: Sequence[int]) -> Iterator[Any]:
    """Concept 0 until positions[0], concept k from positions[k - 1] on: abrupt changes.
    (river's ConceptDriftStream overflows for narrow widths over long streams.)"""
    start = 0
    for k, end in enumerate([*positions, None]):
        yield from itertools.islice(iter(make(k)), None if end is None else end - start)
        start = end or start


def _river_case(
    name: str,
    stream: Iterable[tuple[dict, Any]],
    n: int,
    changes: list[Change],
    regression: bool,
    source: str,
    model: Any = None,
) -> Case:
    """``model`` (default: River's LogisticRegression behind a StandardScaler) learns
    prequentially; its per-event error is 0/1, or absolute for ``regression``."""
    from river import linear_model, preprocessing

    if model is None:
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    errors = np.empty(n)
    features: list[list[float]] = []
    keys: list[Any] | None = None
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(itertools.islice(stream, n)):
        if keys is None:
            keys = sorted(x)
        features.append([float(x[k]) for k in keys])
        p = model.predict_one(x)
        errors[i] = abs(y - p) if regression else float(p != y)
        model.learn_one(x, y)
    return Case(name, source, errors, changes, np.asarray(features), time.perf_counter() - t0)


def _quarters(n: int) -> list[int]:
    return [n // 4, n // 2, 3 * n // 4]


def _sea(n: int, seed: int) -> Case:
    from river.datasets import synth

    q = _quarters(n)
    return _river_case(
        "river SEA (abrupt, 10% noise)",
        _abrupt(lambda k: synth.SEA(variant=k, noise=0.1, seed=seed + k), q),
        n,
        [Change(p) for p in q],
        False,
        f"SEA variants 0→1→2→3 at {q}; StandardScaler + LogisticRegression",
    )


def _stagger(n: int, seed: int) -> Case:
    from river import linear_model, preprocessing
    from river.datasets import synth

    q = _quarters(n)[:2]
    return _river_case(
        "river STAGGER (abrupt)",
        _abrupt(lambda k: synth.STAGGER(classification_function=k, seed=seed + k), q),
        n,
        [Change(p) for p in q],
        False,
        f"STAGGER functions 0→1→2 at {q}; one-hot + LogisticRegression",
        preprocessing.OneHotEncoder() | linear_model.LogisticRegression(),
    )


def _agrawal(n: int, seed: int) -> Case:
    from river import tree
    from river.datasets import synth

    q, fns = _quarters(n), (0, 2, 5, 8)
    return _river_case(
        "river Agrawal (abrupt)",
        _abrupt(lambda k: synth.Agrawal(classification_function=fns[k], seed=seed + k), q),
        n,
        [Change(p) for p in q],
        False,
        f"Agrawal functions {fns} at {q}; HoeffdingTreeClassifier (a linear model is near "
        "chance on most Agrawal functions)",
        tree.HoeffdingTreeClassifier(),
    )


def _hyperplane(n: int, seed: int) -> Case:
    """Hyperplane, changing gradually midway."""
    from river.datasets import synth

    mid = n // 2
    width = max(1, n // 25)
    return _river_case(
        "river Hyperplane (gradual)",
        synth.ConceptDriftStream(
            synth.Hyperplane(seed=seed, n_features=10),
            synth.Hyperplane(seed=seed + 10, n_features=10),
            position=mid,
            width=width,
            seed=seed,
        ),
        n,
        [Change(mid, width)],
        False,
        f"Hyperplane(seed {seed}) → Hyperplane(seed {seed + 10}), centred at {mid}, width {width}",
    )


def _friedman(n: int, seed: int) -> Case:
    """FriedmanDrift, a regression, changing at thirds."""
    from river import tree
    from river.datasets import synth

    third = (n // 3, 2 * n // 3)
    return _river_case(
        "river FriedmanDrift (abrupt, regression)",
        synth.FriedmanDrift(drift_type="gra", position=third, seed=seed),
        n,
        [Change(p) for p in third],
        True,
        f"FriedmanDrift('gra') at {list(third)}; HoeffdingTreeRegressor (a linear model's "
        "error barely moves at these changes)",
        tree.HoeffdingTreeRegressor(),
    )


RIVER: dict[str, Callable[[int, int], Case]] = {
    "sea": _sea,
    "stagger": _stagger,
    "agrawal": _agrawal,
    "hyperplane": _hyperplane,
    "friedman": _friedman,
}


def river_cases(n: int, seed: int = 0, only: Iterable[str] | None = None) -> Iterator[Case]:
    """SEA, STAGGER, Agrawal (abrupt), Hyperplane (gradual), FriedmanDrift (regression):
    ``n`` events each, changes at quarters (thirds for FriedmanDrift); ``only`` some of
    them (keys of :data:`RIVER`)."""
    keep = set(RIVER if only is None else only)
    for key, make in RIVER.items():
        if key in keep:
            yield make(n, seed)


# ---- our producers' streams -----------------------------------------------------------------
def our_case(kind: str, n: int, seed: int = 0) -> Case:
    """Our pipeline (drift monitor off, so nothing reacts) on our producer's stream with
    one drift midway; its per-event prequential loss."""
    stream = generated(kind, n, seed=seed, drift_at=n // 2)
    base = pipeline_settings(kind, stream)
    spec = base.pipelines[0]
    drift = spec.drift.model_copy(update={"detector": "none", "actions": (), "input": False})
    settings = base.model_copy(update={"pipelines": (spec.model_copy(update={"drift": drift}),)})
    result, docs, _ = run_ours(stream, settings)
    index = np.array(sorted(docs))
    losses = np.array([docs[i]["loss"] for i in index])
    # positions in the scored sequence (events before a window fills are not scored)
    at = int(np.searchsorted(index, n // 2))
    return Case(
        f"ours {kind}",
        stream.source,
        losses,
        [Change(at)],
        None,
        result.seconds,
    )
