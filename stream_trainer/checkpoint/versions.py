"""The checkpoint format's versions and the migrations between them.

A checkpoint is the product's memory, and it must outlive the code that wrote it (like
Flink's savepoints). So: one place declares the format (:data:`FORMAT_VERSION`); every
change to what a checkpoint holds bumps it and adds a step here (vN -> vN+1) that carries
everything it can; loading runs the chain from whatever version a file holds. Each
release's CHANGELOG entry says what an upgrade does to existing checkpoints, and
``tests/fixtures/checkpoints/`` holds files written by real releases that
``tests/test_upgrade.py`` loads (``tests/test_checkpoint_guard.py`` fails when the
structure changes without a bump).

The versions (what each added to the one before):

1. 2026-11-30 (93b9173): model, optimizers, featurizer, drift, policy, offsets, ledger,
   duplicate window (blake2b digests), counters.
2. 2026-12-07 (e1fb2d7), still labelled 1 on disk: the learner's trivial baseline and
   mixture; the duplicate window's hash (xxhash), owners and partitions; a pending count
   in the drift signal; delayed labels' joiner state (an optional key).
3. 0.2.0: the package version that wrote the file, the pipeline's kind and its settings
   (JSON; an upgraded file gets those of the config it was restored with).
4. (unreleased): ``reshape``: a model of the config's new shape racing the restored one,
   with its settings, featurizer state, race and carried rows (pipeline/reshape.py);
   empty when no such race runs, as in every file written before.

A migration cannot invent what an older release never kept; for that it takes today's
fresh state (:class:`Context`: the document a new pipeline of the same config would
write), so that a new part starts as it would on a first run and everything else is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

FORMAT_VERSION = 4
# (v1 -> v2, clicks) the pseudo-events at rate 1/2 that the recent click rate of a model
# from before the baselines starts with: its half-life (models/baseline.py)
LEGACY_RATE_EVENTS = 50_000.0
# the first version that records the package (a file written before says nothing)
UNKNOWN_PACKAGE = "unknown (before 0.2.0)"

Doc = dict[str, Any]
Migration = Callable[[Doc, "Context"], Doc]


class UnknownFormat(ValueError):
    """A file of a format this code does not know (newer, or not ours)."""


def on_disk_version(doc: Mapping[str, Any]) -> int:
    """The version of a loaded document (2 is labelled 1 on disk: told by its layout)."""
    v = doc.get("format_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise UnknownFormat(f"format_version {v!r} is not a version")
    if v == 1 and "mixture" in doc.get("learner", {}):
        return 2
    if not 1 <= v <= FORMAT_VERSION:
        raise UnknownFormat(
            f"format_version {v} is newer than this release reads ({FORMAT_VERSION}): "
            "run the release that wrote it, or a newer one"
        )
    return v


@dataclass(frozen=True)
class Context:
    """What a migration may ask of the pipeline that restores: its kind, and the document
    a new pipeline of its config would write (for the parts a version added)."""

    kind: str
    fresh: Mapping[str, Any]


def upgrade(doc: Mapping[str, Any], ctx: Context) -> tuple[Doc, list[int]]:
    """``doc`` in today's format, and the versions it passed through (empty when it
    already was)."""
    v = on_disk_version(doc)
    out: Doc = dict(doc)
    path: list[int] = []
    while v < FORMAT_VERSION:
        path.append(v)
        out = MIGRATIONS[v](out, ctx)
        v += 1
        out["format_version"] = v
    return out, path


# ---- the steps ----------------------------------------------------------------------------
def _v1_to_v2(doc: Doc, ctx: Context) -> Doc:
    """The heads learn on top of a running baseline since 2026-12 (models/baseline.py):
    the trivial baseline and the mixture start as on a first run (the old release kept no
    running means to carry), and where the baseline adds an offset the old model did not
    expect, the model is changed so that it forecasts exactly what it did:

    - clicks: the offset is the logit of the slowly forgetting click rate. The old model
      learned the whole logit, the base rate in it: a fresh rate, whose logit moves to
      the base rate's within a few hundred events, would count the base rate twice until
      the model unlearned it (measured: 1.8 % worse log loss than the old release over
      the next 20,000 events). So the recent rate starts at one half over
      ``LEGACY_RATE_EVENTS`` pseudo-events (offset 0: the same scores at once) and moves
      to the stream's rate at the pace of its own forgetting, which the model follows;
      the all-time rate (the trivial expert) starts empty, as it should;
    - sensors: the offset is the window's last reading (persistence): the linear skip
      path's weight on that reading, per channel, less one, so that the sum is the old
      forecast;
    - ticks: no offset.

    The duplicate window says which hash made its digests: blake2b, which today's xxhash
    digests never match, so the deduper starts its window afresh (events/dedup.py; the
    offsets and ledger still hold: nothing is read twice, only a producer's repeat of an
    event from before the upgrade goes unnoticed). The drift signal's missing pending
    count reads as none (drift/signal.py)."""
    learner = doc["learner"]
    if "model" in learner:  # (a by_key shard's is a manifest: its files, each a learner's,
        # are upgraded as they load: upgrade_learner, learner/keyed.py)
        learner = upgrade_learner(learner, 1, ctx.kind, ctx.fresh["learner"])
    dedup = dict(doc["dedup"])
    if dedup:
        dedup.setdefault("hash", "blake2b_64")
    return {**doc, "learner": learner, "dedup": dedup}


def upgrade_learner(
    state: Mapping[str, Any], version: int, kind: str, fresh: Mapping[str, Any]
) -> Doc:
    """One learner's state (a shared pipeline's, or a by_key model's file) written in
    format ``version``, in today's; ``fresh``: a new learner's state (see _v1_to_v2)."""
    out = dict(state)
    if version >= 2:  # (no change to a learner's state since)
        return out
    for part in ("baseline", "mixture"):
        out[part] = copy.deepcopy(fresh[part])
    if kind == "clicks":
        baseline = dict(out["baseline"])
        baseline["counts"] = torch.tensor([LEGACY_RATE_EVENTS, LEGACY_RATE_EVENTS / 2.0],
                                          dtype=torch.float64)  # fmt: skip
        out["baseline"] = baseline
    if kind == "sensors":
        model = dict(out["model"])
        w = model["linear.weight"].clone()  # [channels, window * channels]
        channels = w.shape[0]
        last = w.shape[1] - channels  # the flattened window's last reading, channel 0
        w[torch.arange(channels), last + torch.arange(channels)] -= 1.0
        model["linear.weight"] = w
        out["model"] = model
    return out


def _v2_to_v3(doc: Doc, ctx: Context) -> Doc:
    return {**doc, "package_version": UNKNOWN_PACKAGE, "kind": ctx.kind,
            "settings": ctx.fresh["settings"]}  # fmt: skip


def _v3_to_v4(doc: Doc, ctx: Context) -> Doc:
    """No race of a new model shape ran before format 4 (a new shape refused to start)."""
    return {**doc, "reshape": {}}


MIGRATIONS: dict[int, Migration] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
# what a step could not carry (said in the log when a file passes through it)
NOT_CARRIED: dict[int, str] = {
    1: "the trivial baseline and mixture start afresh (not kept before); the duplicate "
    "window starts afresh (blake2b digests)",
}


def not_carried(path: list[int]) -> str:
    """What an upgrade through the versions ``path`` left behind ("" when nothing)."""
    return "; ".join(NOT_CARRIED[v] for v in path if v in NOT_CARRIED)


assert sorted(MIGRATIONS) == list(range(1, FORMAT_VERSION)), "a step per version"
