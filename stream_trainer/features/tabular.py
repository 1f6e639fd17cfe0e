"""The tabular featurizer: declared (or discovered) fields of any JSON event -> online-
normalised numbers and hashed categories, and the target of a binary, multiclass or
regression task.

The settings (a pipeline's ``featurizer:``), e.g.::

    task: multiclass
    target: {field: species, classes: [setosa, versicolor, virginica]}
    numeric: [petal.length, petal.width]
    categorical: [garden]

``target`` is a dotted path, or ``{field, positive}`` (binary from values: the listed
ones are 1, the rest 0), ``{field, classes}`` (multiclass, listed) or ``{field,
max_classes}`` (multiclass, learned as they appear). Without ``numeric`` and
``categorical`` (or with ``features: auto``) every scalar field but the target, ``ts``
and ``key`` is a feature: typed when first seen (numbers are numeric, strings and
booleans categorical), at most ``max_numeric`` numeric columns and ``max_categorical``
categories per event. Categories are hashed as ``path=value`` (Vowpal Wabbit's
namespaces) into ``buckets``. Numbers are normalised by their running mean and spread
(forgetting beyond ``1 / alpha`` events), part of the featurizer's state. Regression
targets are learned in units of their running spread around their running mean, taken
before each event, so a fresh model predicts the running mean.

>>> f = TabularFeaturizer("regression", "y", numeric=["a"], categorical=["b"])
>>> fb = f.featurize([{"x": [1.0], "c": ["u"], "y": 2.0}, {"x": [3.0], "c": ["v"], "y": 4.0}])
>>> fb.inputs["num"].shape, fb.inputs["cat"].shape, fb.targets.tolist()
((2, 1), (2, 1), [2.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_trainer.errors import ConfigError
from stream_trainer.events.tabular import TASKS, TabularSpec
from stream_trainer.features.base import FeatureBatch, stable_hash

CLIP = 5.0  # normalised inputs beyond this many running spreads are clipped
TARGET_CLIP = 20.0


def _spec(
    task: str,
    target: str | Mapping[str, Any],
    numeric: Sequence[str],
    categorical: Sequence[str],
    features: str | None,
    ts: str | None,
    key: str | None,
) -> tuple[TabularSpec, int]:
    """The decoder's spec and the number of classes (0: not multiclass), checked."""
    if task not in TASKS:
        raise ConfigError(
            f"tabular featurizer: task must be one of {', '.join(TASKS)}, not {task!r}"
        )
    t = {"field": target} if isinstance(target, str) else dict(target)
    unknown = set(t) - {"field", "positive", "classes", "max_classes"}
    if unknown or not isinstance(t.get("field"), str):
        raise ConfigError(
            "tabular featurizer: target must be a dotted path or {field, positive | classes "
            f"| max_classes}}, got {target!r}"
        )
    classes = tuple(str(c) for c in t.get("classes") or ())
    positive = tuple(str(v) for v in t.get("positive") or ())
    n_classes = 0
    if task == "multiclass":
        n_classes = len(classes) or int(t.get("max_classes", 32))
        if n_classes < 2 or len(set(classes)) != len(classes):
            raise ConfigError("tabular featurizer: multiclass needs 2 or more distinct classes")
    elif classes or "max_classes" in t:
        raise ConfigError(f"tabular featurizer: target classes need task multiclass, not {task}")
    if positive and task != "binary":
        raise ConfigError(f"tabular featurizer: target positive needs task binary, not {task}")
    if features not in (None, "auto", "declared"):
        raise ConfigError(
            f"tabular featurizer: features must be 'auto' or left out, not {features!r}"
        )
    auto = features == "auto" or not (numeric or categorical)
    if auto and (numeric or categorical):
        raise ConfigError("tabular featurizer: features: auto takes no numeric/categorical list")
    spec = TabularSpec(
        task, t["field"], tuple(numeric), tuple(categorical), auto, classes, positive, ts, key
    )
    try:
        spec.check()  # the paths parse
    except ValueError as err:
        raise ConfigError(f"tabular featurizer: {err}") from None
    return spec, n_classes


class TabularFeaturizer:
    """Events of :func:`stream_trainer.events.tabular.tabular_schema` -> examples."""

    stateless = False  # running statistics, the columns and classes it has seen

    def __init__(
        self,
        task: str,
        target: str | Mapping[str, Any],
        numeric: Sequence[str] = (),
        categorical: Sequence[str] = (),
        features: str | None = None,
        ts: str | None = None,
        key: str | None = None,
        buckets: int = 1 << 16,
        max_numeric: int = 64,
        max_categorical: int = 32,
        alpha: float = 1e-4,
    ) -> None:
        self.spec, self.n_classes = _spec(task, target, numeric, categorical, features, ts, key)
        self.task = task
        self.channels = self.spec.channels()
        self.buckets = buckets
        self.alpha = alpha
        s = self.spec
        n_num = max_numeric if s.auto else len(s.numeric)
        n_cat = max_categorical if s.auto else len(s.categorical)
        self.input_spec: dict[str, Any] = {
            "numeric": max(1, n_num),
            "categorical": max(1, n_cat),
            "buckets": buckets,
            "task": task,
            "classes": self.n_classes,
        }
        self.columns: dict[str, int] = {p: i for i, p in enumerate(s.numeric)}
        self.types: dict[str, str] = {}  # auto: each path's type when first seen
        self.classes: list[str] = list(s.classes)  # multiclass, learned ones appended
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self._learn_classes = task == "multiclass" and not s.classes
        d = self.input_spec["numeric"]
        self.count, self.mean, self.var = np.zeros(d), np.zeros(d), np.ones(d)
        self.target_moments = np.array([0.0, 0.0, 1.0])  # count, mean, var

    # ---- events -> arrays ---------------------------------------------------------------
    def _auto_columns(
        self, events: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, list[list[str]]]:
        """``features: auto``: the numeric matrix (NaN: absent) and each event's tokens."""
        d, types, cols = self.input_spec["numeric"], self.types, self.columns
        x = np.full((len(events), d), np.nan)
        tokens: list[list[str]] = []
        for i, ev in enumerate(events):
            for path, v in ev["n"].items():
                kind = types.setdefault(path, "n")
                if kind == "c":
                    ev["cat"][path] = repr(v) if isinstance(v, float) else str(int(v))
                    continue
                col = cols.get(path)
                if col is None and len(cols) < d:
                    col = cols[path] = len(cols)
                if col is not None:
                    x[i, col] = v
            toks = []
            for path in sorted(ev["cat"]):
                if types.setdefault(path, "c") == "c":
                    toks.append(f"{path}={ev['cat'][path]}")
            tokens.append(toks[: self.input_spec["categorical"]])
        return x, tokens

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        """Fold the batch into the running moments, then scale by them (NaN -> 0)."""
        present = ~np.isnan(x)
        nb = present.sum(0).astype(np.float64)
        if nb.any():
            xs = np.where(present, x, 0.0)
            mean_b = xs.sum(0) / np.maximum(nb, 1)
            var_b = (np.where(present, x - mean_b, 0.0) ** 2).sum(0) / np.maximum(nb, 1)
            total = self.count + nb
            safe = np.maximum(total, 1)
            delta = mean_b - self.mean
            first = self.count == 0
            var = (self.count * self.var + nb * var_b + delta**2 * self.count * nb / safe) / safe
            self.var = np.where(nb > 0, np.where(first, var_b, var), self.var)
            self.mean = np.where(nb > 0, self.mean + delta * nb / safe, self.mean)
            self.count = np.minimum(total, 1.0 / self.alpha)
        z = (x - self.mean) / np.sqrt(self.var + 1e-12)
        return np.clip(np.where(present, z, 0.0), -CLIP, CLIP)

    def _targets(
        self, ys: Sequence[Any]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(targets in model units, which events have one, scale, shift)."""
        n = len(ys)
        keep = np.ones(n, bool)
        if self.task == "binary":
            return np.asarray(ys, np.float32), keep, None, None
        if self.task == "multiclass":
            idx = np.zeros(n, np.float32)
            for i, y in enumerate(ys):
                if isinstance(y, str):  # learned as they appear
                    j = self._class_index.get(y)
                    if j is None and len(self.classes) < self.n_classes:
                        j = self._class_index[y] = len(self.classes)
                        self.classes.append(y)
                    if j is None:
                        keep[i] = False  # more classes than max_classes: not learned
                        continue
                    y = j
                idx[i] = y
            return idx, keep, None, None
        count, mean, var = self.target_moments
        cap = 1.0 / self.alpha
        t, scale, shift = np.empty(n), np.empty(n), np.empty(n)
        for i, y in enumerate(ys):
            sd = float(np.sqrt(var)) if count >= 2 and var > 0 else max(1.0, abs(mean))
            shift[i], scale[i] = mean, sd
            t[i] = max(-TARGET_CLIP, min(TARGET_CLIP, (y - mean) / sd))
            count = min(count + 1, cap)
            w = 1.0 / count
            delta = y - mean
            mean += w * delta
            var = (1 - w) * (var + w * delta * delta) if count > 1 else 0.0
        self.target_moments = np.array([count, mean, var])
        f = np.float32
        return t.astype(f), keep, scale.astype(f), shift.astype(f)

    def featurize(self, events: Sequence[Mapping[str, Any]]) -> FeatureBatch:
        n = len(events)
        if self.spec.auto:
            events = [{**ev, "cat": dict(ev["cat"])} for ev in events]
            x, tokens = self._auto_columns(events)
        else:
            x = np.array([ev["x"] for ev in events], np.float64).reshape(n, len(self.spec.numeric))
            paths = self.spec.categorical
            tokens = [[f"{p}={v}" for p, v in zip(paths, ev["c"], strict=True)] for ev in events]
            if x.shape[1] == 0:
                x = np.full((n, 1), np.nan)
        num = self._normalise(x)
        cat = np.zeros((n, self.input_spec["categorical"]), np.int64)
        for i, toks in enumerate(tokens):
            for j, tok in enumerate(toks):
                cat[i, j] = stable_hash(tok, self.buckets)
        targets, keep, scale, shift = self._targets([ev["y"] for ev in events])
        rows = np.flatnonzero(keep)
        if len(rows) < n:
            num, cat, targets = num[rows], cat[rows], targets[rows]
        keys = [str(events[i]["key"]) for i in rows.tolist()] if self.spec.key else []
        return FeatureBatch(
            inputs={"num": num.astype(np.float32), "cat": cat},
            targets=targets,
            index=rows.astype(np.int64),
            scale=scale,
            shift=shift,
            keys=keys,
        )

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        import torch

        return {
            "spec": list(self.channels),
            "moments": torch.from_numpy(np.stack([self.count, self.mean, self.var])),
            "target": torch.from_numpy(self.target_moments.copy()),
            "columns": sorted(self.columns, key=self.columns.__getitem__),
            "types": sorted(self.types.items()),
            "classes": list(self.classes),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state["spec"]) != list(self.channels):
            raise ValueError(
                f"tabular fields changed: checkpoint has {list(state['spec'])}, config has "
                f"{list(self.channels)}"
            )
        moments = np.asarray(state["moments"], np.float64)
        if moments.shape != (3, len(self.mean)):
            raise ValueError(f"tabular moments have shape {moments.shape}")
        self.count, self.mean, self.var = (m.copy() for m in moments)
        self.target_moments = np.asarray(state["target"], np.float64).copy()
        self.columns = {p: i for i, p in enumerate(state["columns"])}
        self.types = {str(p): str(t) for p, t in state["types"]}
        self.classes = [str(c) for c in state["classes"]]
        self._class_index = {c: i for i, c in enumerate(self.classes)}
