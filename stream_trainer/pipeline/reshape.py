"""A config change of the model's shape: the restored model races a new one.

When the config's ``model`` or ``featurizer`` settings differ from those the checkpoint
was written with (``model.hidden`` 64 -> 128, ``id_buckets`` doubled...), the restored
model cannot load into the configured one, and throwing it away would throw away what it
learned. So the restored model stays champion, with the settings it was built with (its
own featurizer: its ``id_buckets``): it scores, serves, emits and trains as before. A
model of the configured shape, with the configured featurizer, trains beside it on the
same events as a challenger, in the race the drift policy runs
(:class:`~stream_trainer.drift.challenger.ChallengerRace`, scored prequentially on the
same events), and takes over when its loss over the last ``drift.challenger_window``
events is below the champion's: from then on the config's settings are the pipeline's
(a log line ``config applied``). It is never dropped (the config asks for it); margin 0:
it need not beat the champion by ``challenger_margin``, only be no worse.

What the challenger starts from (:func:`carry`):

- tensors whose shape did not change: copied (with an unchanged featurizer, every
  embedding table);
- a layer that grew (``model.hidden``): the old units' weights in the first rows, the new
  units' outgoing weights zero, so the challenger starts computing exactly what the
  champion does and the new units grow from there (Net2Net's function-preserving
  widening, without the split);
- embedding tables whose row count changed (``id_buckets``): an id hashes to bucket
  ``1 + crc % (B - 1)``, so without the ids a row of the old table has no row in the new
  one. The ids come with the events: the first time a batch uses a row of the new table,
  it starts as the champion's row of the same event's id, read before the champion
  learned from that batch (no label leaks into the challenger's prequential loss)
  (:class:`RowCarry`). Rows a colliding id shared in the smaller table start shared;
- anything else (a new layer, a tensor that shrank): the fresh model's initialisation.
  The optimizer's state follows the values (a kept tensor's, a grown one's old block, a
  carried row's: :func:`carry_optimizer`), so the carried weights go on moving as the
  champion's do; the trivial baselines and the mixture are the champion's.

While the race runs, a checkpoint holds both (``reshape``: the challenger's settings,
featurizer state, race and which new rows were carried; format 4), so a restart resumes
it. Where the featurizers differ, the second one runs on the same events
(:class:`Paired`, the pipeline's featurizer only while the race runs); the ingest
workers then send events, not examples. Not for ``by_key`` or replicated pipelines, nor a
changed featurizer with delayed labels: those still refuse, with what to do.
"""

from __future__ import annotations

import copy
import json
import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from stream_trainer.drift.challenger import PROMOTED, ChallengerRace
from stream_trainer.errors import StreamTrainerError
from stream_trainer.learner import Learner
from stream_trainer.models.registry import build_featurizer
from stream_trainer.pipeline import build
from stream_trainer.pipeline_config import PipelineSettings

log = logging.getLogger(__name__)

PARTS = ("model", "featurizer")  # the settings that decide the model's shape
NEVER = sys.maxsize  # the race's patience: a challenger the config asks for is never dropped


def shape_settings(spec: PipelineSettings) -> dict[str, Any]:
    dumped = spec.model_dump(mode="json")
    return {k: dumped[k] for k in PARTS}


def saved_shape(settings_json: str) -> dict[str, Any]:
    saved = json.loads(settings_json)
    return {k: saved.get(k) for k in PARTS}


# ---- what the challenger starts from -----------------------------------------------------
def _grow_into(t: torch.Tensor, o: torch.Tensor) -> None:
    """``o``'s values in the leading block of the larger ``t``; a weight's new input
    columns (the new units' outgoing weights, in the next layer) zero."""
    if t.dim() >= 2:
        t[:, o.shape[1] :] = 0.0
    t[tuple(slice(0, s) for s in o.shape)] = o.to(t.dtype)


def _param_states(learner: Any) -> dict[str, tuple[nn.Parameter, dict[str, Any]]]:
    """{parameter name: (parameter, its optimizer state)} of a learner."""
    names = {id(q): n for n, q in learner.model.named_parameters()}
    return {names[id(q)]: (q, opt.state[q]) for opt in learner.optimizer.parts.values()
            for g in opt.param_groups for q in g["params"] if id(q) in names}  # fmt: skip


def row_states(learner: Any, table: str) -> list[torch.Tensor]:
    """The optimizer's per-row state of embedding ``table`` (Adagrad's sums, Adam's
    moments): its tensors of the weight's shape."""
    q, state = _param_states(learner).get(f"{table}.weight", (None, {}))
    if q is None:
        return []
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == q.shape]


def carry_optimizer(old: Any, new: Any, done: Mapping[str, list[str]]) -> None:
    """The optimizer's state of the tensors :func:`carry` kept or grew, like their
    values (a grown tensor's new entries: no history), so that the carried weights go on
    moving as the champion's do, not by a fresh optimizer's first large steps."""
    if type(old.optimizer.parts.get("dense")) is not type(new.optimizer.parts.get("dense")):
        return
    before = _param_states(old)
    with torch.no_grad():
        for name, (q, state) in _param_states(new).items():
            if name not in done["kept"] and name not in done["grown"] or name not in before:
                continue
            oq, ostate = before[name]
            if not ostate:
                continue
            out: dict[str, Any] = {}
            for k, v in ostate.items():
                if isinstance(v, torch.Tensor) and v.shape == oq.shape and v.dim():
                    out[k] = torch.zeros_like(q, memory_format=torch.preserve_format)
                    _grow_into(out[k], v)
                else:
                    out[k] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            state.clear()
            state.update(out)


def carry(old: nn.Module, new: nn.Module) -> dict[str, list[str]]:
    """Copy into ``new`` what fits of ``old`` (see the module's note); what was done to
    each tensor: ``{"kept": [...], "grown": [...], "by_id": [...], "fresh": [...]}``."""
    tables = {f"{n}.weight" for n, m in new.named_modules() if isinstance(m, nn.Embedding)}
    src = old.state_dict()
    out: dict[str, list[str]] = {"kept": [], "grown": [], "by_id": [], "fresh": []}
    with torch.no_grad():
        for k, t in new.state_dict().items():
            o = src.get(k)
            if o is None or o.dim() != t.dim():
                out["fresh"].append(k)
            elif o.shape == t.shape:
                t.copy_(o)
                out["kept"].append(k)
            elif k in tables:
                out["by_id" if o.shape[1:] == t.shape[1:] else "fresh"].append(k)
            elif all(a <= b for a, b in zip(o.shape, t.shape, strict=True)):
                _grow_into(t, o)
                out["grown"].append(k)
            else:
                out["fresh"].append(k)
    return out


class RowCarry:
    """The rows of resized embedding tables, carried by the ids of the events both models
    see: the champion's rows a batch uses are noted before it learns (a forward pre-hook),
    and the first time the challenger's same batch uses a row of its table, the row starts
    as the champion's. Positions match because both featurizers made the rows from the
    same events (a batch whose shapes differ carries nothing). The hooks are on the
    modules only during each model's step, so the copies serving makes of a model (and
    sends to the serving process) never hold them."""

    def __init__(self, champion: Any, challenger: Any, names: list[str]) -> None:
        self.names = [n.removesuffix(".weight") for n in names]
        self.challenger = challenger
        mods = dict(challenger.model.named_modules())
        self.seen = {n: torch.zeros(mods[n].num_embeddings, dtype=torch.bool) for n in self.names}
        # per table: the ids the champion's batch used, its rows and their optimizer state
        self._noted: dict[str, tuple[torch.Tensor, list[torch.Tensor]]] = {}
        self._hooked(challenger, self._carrier)
        self.champion: Any = None
        self.follow(champion)

    def follow(self, champion: Any) -> None:
        """Note the rows of learner ``champion`` (again after a drift race replaced it)."""
        if champion is self.champion:
            return
        if self.champion is not None:
            self.champion.__dict__.pop("step", None)
        self._hooked(champion, self._noter)
        self.champion = champion

    def _hooked(self, learner: Any, hook: Callable[[str], Any]) -> None:
        """``learner.step`` with ``hook(table)`` on its tables for the step's duration."""
        step = type(learner).step.__get__(learner)

        def hooked_step(*args: Any, **kw: Any) -> Any:
            mods = dict(learner.model.named_modules())
            handles = [mods[n].register_forward_pre_hook(hook(n)) for n in self.names
                       if isinstance(mods.get(n), nn.Embedding)]  # fmt: skip
            try:
                return step(*args, **kw)
            finally:
                for h in handles:
                    h.remove()

        learner.step = hooked_step

    def close(self) -> None:
        for learner in (self.champion, self.challenger):
            if learner is not None:
                learner.__dict__.pop("step", None)

    def _noter(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def note(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training:
                ids, weight = args[0], module.weight
                assert isinstance(weight, torch.Tensor)
                rows = [t.detach()[ids] for t in (weight, *row_states(self.champion, name))]
                self._noted[name] = (ids, rows)

        return note

    def _carrier(self, name: str) -> Callable[[nn.Module, tuple[Any, ...]], None]:
        def carry_rows(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not module.training:
                return
            ids, noted, weight = args[0], self._noted.pop(name, None), module.weight
            assert isinstance(weight, torch.Tensor)
            flat = ids.reshape(-1).cpu()
            seen = self.seen[name]
            if noted is not None and noted[0].shape == ids.shape:
                new = ~seen[flat] & (flat != 0)  # (row 0: the padding row)
                into = [weight, *row_states(self.challenger, name)]
                if bool(new.any()) and len(into) == len(noted[1]):
                    at = flat[new].to(weight.device)
                    with torch.no_grad():
                        for dst, rows in zip(into, noted[1], strict=True):
                            dst[at] = rows.reshape(flat.shape[0], -1)[new.to(rows.device)].to(
                                dst.dtype
                            )
            seen[flat] = True

        return carry_rows

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: s.clone() for n, s in self.seen.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for n, s in state.items():
            if n in self.seen and s.shape == self.seen[n].shape:
                self.seen[n] = s.clone().to(torch.bool)


class Paired:
    """The champion's featurizer, which also runs the challenger's on the same events:
    each batch carries the challenger's examples as ``second`` (None when it failed)."""

    def __init__(self, champion: Any, challenger: Any) -> None:
        self.champion, self.challenger = champion, challenger

    def featurize(self, events: Any) -> Any:
        fb = self.champion.featurize(events)
        try:
            second = self.challenger.featurize(events)
        except Exception as err:  # a user featurizer may fail: this batch races not
            log.debug("challenger's featurizer failed", extra={"error": repr(err)[:200]})
            second = None
        fb.second = second
        return fb

    def __getattr__(self, name: str) -> Any:  # the rest is the champion's
        if name in ("champion", "challenger") or name.startswith("__"):
            raise AttributeError(name)  # (not set yet: a copy being made)
        return getattr(self.champion, name)


# ---- the race -------------------------------------------------------------------------------
class Reshape:
    """A running race between the restored model and one of the configured shape."""

    def __init__(self, p: Any, new_spec: PipelineSettings, new_featurizer: Any) -> None:
        self.p, self.spec, self.featurizer = p, new_spec, new_featurizer
        self.features = p.learner.features  # the champion's featurizer settings (serving)
        self.paired = p.spec.featurizer != new_spec.featurizer
        device = p.learner.device
        self.make = build.learner_factory(p.settings, new_spec, new_featurizer, device)
        self.rows: RowCarry | None = None
        self.carried: dict[str, list[str]] = {}
        d = new_spec.drift
        self.race = ChallengerRace(self.spawn, window=d.challenger_window, margin=0.0,
                                   patience=NEVER)  # fmt: skip

    def spawn(self) -> Learner:
        champion = self.p.learner
        child = self.make()
        self.carried = carry(champion.model, child.model)
        carry_optimizer(champion, child, self.carried)
        if self.rows is not None:
            self.rows.close()
        self.rows = RowCarry(champion, child, self.carried["by_id"])
        for part in ("baseline", "mixture"):  # the trivial experts are the stream's
            mine, theirs = getattr(child, part), getattr(champion, part)
            if mine is not None and theirs is not None:
                mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
        child.features = shape_settings(self.spec)["featurizer"]  # type: ignore[attr-defined]
        return child

    def step(self, fb: Any, champion_losses: np.ndarray) -> tuple[str, Any] | None:
        """The challenger learns from the champion's batch (its own examples of it)."""
        champion = self.p.learner
        if getattr(champion, "features", None) is None:  # a drift race's winner: serving
            champion.features = self.features  # scores it with the champion's featurizer
        if self.rows is not None:
            self.rows.follow(champion)
        if self.paired:
            fb = getattr(fb, "second", None)
            if fb is None or len(fb) == 0:
                return None
        n = len(fb)
        if champion_losses.shape[0] != n:  # (a stateful featurizer kept other events)
            champion_losses = np.full(n, float(np.mean(champion_losses)))
        return self.race.step(fb.inputs, fb.targets, champion_losses)

    def state_dict(self) -> dict[str, Any]:
        return {
            "settings": json.dumps(self.spec.model_dump(mode="json"), sort_keys=True),
            "featurizer": self.featurizer.state_dict() if self.paired else {},
            "race": self.race.state_dict(),
            "rows": self.rows.state_dict() if self.rows is not None else {},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.paired and state["featurizer"]:
            self.featurizer.load_state_dict(state["featurizer"])
        self.race.load_state_dict(state["race"])
        if self.rows is not None and state["rows"]:
            self.rows.load_state_dict(state["rows"])

    def close(self) -> None:
        if self.rows is not None:
            self.rows.close()


def _refuse(p: Any, why: str) -> StreamTrainerError:
    return StreamTrainerError(
        f"pipeline {p.name}: the model's or featurizer's settings changed since the "
        f"checkpoint in {p.store.dir}, and {why}; restore the old settings, or move the "
        "checkpoint directory away to start fresh"
    )


def begin(p: Any, doc: Mapping[str, Any]) -> None:
    """Before the strict load of ``doc``: when the config's model or featurizer settings
    differ from the checkpoint's, make the pipeline's champion of the checkpoint's own
    settings (its learner, featurizer, decoder) and set the configured ones aside for the
    race (``p.reshape``), started or resumed by :func:`resume`."""
    p.reshape = None
    if doc["kind"] != p.spec.kind:
        raise StreamTrainerError(
            f"pipeline {p.name}: the checkpoint in {p.store.dir} is of kind "
            f"{doc['kind']!r}, the config says {p.spec.kind!r}; restore the old config, or "
            "move the checkpoint directory away to start fresh"
        )
    saved = saved_shape(doc["settings"])
    if saved == shape_settings(p.spec):
        if doc.get("reshape"):
            log.warning("config back to the champion's settings: the racing model is dropped",
                        extra={"pipeline": p.name})  # fmt: skip
        return
    if getattr(p, "keyed", False) or getattr(p, "replicated", False):
        raise _refuse(p, "a new shape does not race yet in by_key or replicated pipelines")
    new_spec, new_featurizer = p.spec, p.featurizer
    try:
        old = PipelineSettings.model_validate({**p.spec.model_dump(mode="json"), **saved})
        featurizer = build_featurizer(old.kind, old.featurizer)
        champion = build.learner_factory(p.settings, old, featurizer, p.learner.device)()
    except Exception as err:  # (settings, or a plugin, that today's code cannot build)
        raise _refuse(p, f"its own cannot be built today ({str(err)[:200]})") from None
    if old.featurizer != new_spec.featurizer:
        if p.joiner is not None:
            raise _refuse(p, "a new featurizer does not race yet with delayed labels")
        if build.decoder_spec(old, featurizer) != p.decoder_spec:
            raise _refuse(p, "the events it decodes differ (a featurizer's channels)")
    p.learner = champion
    p.learner.features = saved["featurizer"]  # (serving scores it with its own)
    p.spec = old
    p.reshape = Reshape(p, new_spec, new_featurizer)
    if p.reshape.paired:
        p.featurizer = Paired(featurizer, new_featurizer)
        p.worker_featurizer = None  # the workers send events: both featurizers see them


def resume(p: Any, doc: Mapping[str, Any]) -> None:
    """After the load: resume the race the checkpoint holds (when it is of these
    settings), or start it."""
    r: Reshape | None = getattr(p, "reshape", None)
    if r is None:
        return
    held = doc.get("reshape") or {}
    if held and saved_shape(held["settings"]) == shape_settings(r.spec):
        r.load_state_dict(held)
        how = "resumed"
    else:
        r.race.start()
        how = "started"
    p.hooks.on_race("config", True)
    log.warning(
        f"config changed the model's shape: the restored model stays champion, a model of "
        f"the new settings races it ({how})",
        extra={
            "pipeline": p.name,
            "champion": json.dumps(shape_settings(p.spec), sort_keys=True),
            "challenger": json.dumps(shape_settings(r.spec), sort_keys=True),
            "carried": ", ".join(f"{k}: {len(v)}" for k, v in r.carried.items()),
            "examples_raced": r.race.seen,
        },
    )


def state(p: Any) -> dict[str, Any]:
    r: Reshape | None = getattr(p, "reshape", None)
    return r.state_dict() if r is not None else {}


def step(p: Any, fb: Any, losses: np.ndarray) -> None:
    """After the champion's update: the racing model's; the config applies when it wins."""
    r: Reshape | None = p.reshape
    assert r is not None
    outcome = r.step(fb, losses)
    if outcome is None:
        return
    verdict, winner = outcome
    assert verdict == PROMOTED and winner is not None  # (never dropped)
    r.close()
    winner.updates = p.learner.updates  # the model version keeps counting up
    p.learner, p.spec, p.reshape = winner, r.spec, None
    if r.paired:  # (the decoder is the same: begin checked)
        p.featurizer = r.featurizer
    drift = p.policy.race
    if drift is not None and drift.active:  # a drift race of the old shape: it ends here
        drift.challenger = None
        p.hooks.on_race("drift", False)
    if p.publisher is not None:  # the new shape is served from now on
        p.publisher.publish(p.learner)
    p.hooks.on_challenger(verdict)
    p.hooks.on_race("config", False)
    log.warning(
        "config applied: the model of the new settings won its race and is champion",
        extra={
            "pipeline": p.name,
            "settings": json.dumps(shape_settings(p.spec), sort_keys=True),
            "model_version": p.learner.updates,
            "examples_raced": r.race.seen,
        },
    )
