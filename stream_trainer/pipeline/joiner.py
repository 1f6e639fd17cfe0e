"""Delayed labels: impressions wait here for their label, then become examples.

An impression (an event without a label, with a ``request_id``, on the pipeline's
``topics``) is scored when it arrives, with the weights of that moment, and kept with
that prediction. Its label (``{"request_id", "label", "ts"}`` on ``labels.topic``) joins
it; when its window ends it becomes an example: trained with the label (or, with none,
as ``on_expiry`` says), and scored (loss, quality, drift) with the prediction made at
impression time, so no later weights leak into the score. The click featurizer is
stateless, so the impression's event is its features at impression time.

Why a joined impression waits for its window's end: clicks come within seconds, and
non-clicks are known only when the window ends. Trained as they came, everything new in
the last window (a fresh model, a new item, a new hour of the day) would be learned from
its clicks alone, and scored as if everyone clicked. ``evaluate --study delayed-labels``
on 100k clicks measured it at bb004a8 (labels trained as they came): log loss 2.85x
that of the same stream with inline labels (mean prediction 0.49 on a 0.34 click rate);
River's logistic regression with each label as it comes, 1.94x. Trained at the window's
end, all examples are equally late: the model is ``window_s`` stale, not biased by
the delay (1.05x; 1.02x after the first window, which has no examples at all). A shorter
window trains fresher, and counts the clicks after it ``late`` (their impression was a
negative by then).

Time is event time: the newest ``ts`` of the slowest partition read (a consumer
catching up reads some partitions ahead of others; the slowest says how far all are,
as a Flink watermark does), none while a partition with records has not been read at
all, and none before the labels topic has been read at all (a
labels topic far behind must not expire impressions whose labels it holds; a labels
topic that stays empty leaves ``max_pending`` to bound the memory). A partition whose
log went back (a broker that lost its data: the demo's in-memory one on a second run)
starts its event time over: the new log's events may be older than the old log's, and
measured against the old time every new impression ended at once, a negative whose
label then came ``late`` (the demo's second run trained on negatives alone). An
impression older than ``window_s`` becomes an example with its label, or without one
is resolved by ``on_expiry`` (a negative example, or dropped), whatever order its
partitions were read in (the due times are a heap, not the arrival order); so does the
oldest when more than ``max_pending`` wait, labelled or not. Labels that join
nothing are counted by reason: ``early`` (held until their impression comes, within the window),
``orphaned`` (an early label whose impression never came), ``duplicate`` (a second
label), ``late`` (after the window), ``bad`` (not a label).

Offsets: every record is applied when it is consumed (an impression enters the
pending state, a label joins, is held or is counted), and the pending state is part of
the checkpoint; so a restart resumes both topics where the pending state was saved,
and every impression ends exactly once: labelled, negative or dropped.
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from stream_trainer.events import Rejected, reasons
from stream_trainer.events.decode import _Reject, _ts, clicks_schema, decoder
from stream_trainer.pipeline.batcher import Item, MicroBatcher
from stream_trainer.pipeline.offsets import Offsets
from stream_trainer.pipeline.ports import TP, Record, Source
from stream_trainer.pipeline_config import LabelSettings

EPS = 1e-7
OUTCOMES = ("labelled", "negative", "dropped")
UNMATCHED = ("early", "duplicate", "late", "orphaned", "bad")


class Host(Protocol):
    """What the joiner needs of the pipeline it serves (core.py's ``Pipeline``): declared
    here, so that the joiner never imports the pipeline that holds it."""

    batcher: MicroBatcher[Item]
    offsets: Offsets
    featurizer: Any
    learner: Any
    source: Source | None

    def _reject(self, rec: Record, why: Rejected) -> None: ...

    def _log_went_back(self, tp: TP, expected: int, got: int) -> None: ...


class JoinerHooks:
    def resolved(self, outcome: str, n: int = 1) -> None: ...

    def unmatched(self, reason: str) -> None: ...

    def delay(self, seconds: float) -> None: ...

    def pending(self, n: int) -> None: ...


@dataclass(slots=True)
class Waiting:
    """A pending impression: its event, the prediction made when it arrived, where from."""

    event: dict[str, Any]
    prediction: float
    topic: str
    partition: int
    offset: int
    key: bytes | None
    label: int | None = None  # joined: trained with it when the window ends


def _impression_check(doc: dict[str, Any]) -> dict[str, Any]:
    """A click event whose label is optional, with a request id (kept as a string)."""
    rid = doc.get("request_id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid):
        raise _Reject(reasons.MISSING_FIELD, "request_id (a string or integer)")
    labelled = "label" in doc
    ev = clicks_schema()(doc if labelled else {**doc, "label": 0})
    ev["request_id"] = str(rid)
    if not labelled:
        del ev["label"]
    return ev


def _label_check(doc: dict[str, Any]) -> dict[str, Any]:
    rid = doc.get("request_id")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or not str(rid):
        raise _Reject(reasons.MISSING_FIELD, "request_id (a string or integer)")
    label = doc.get("label")
    if label not in (0, 1) or isinstance(label, float) and label not in (0.0, 1.0):
        raise _Reject(reasons.WRONG_TYPE, "label must be 0 or 1")
    return {"request_id": str(rid), "label": int(label), "ts": _ts(doc)}


class Joiner:
    def __init__(self, settings: LabelSettings, max_event_bytes: int = 1 << 20) -> None:
        self.topic, self.window = settings.topic, settings.window_s
        self.negative = settings.on_expiry == "negative"
        self.max_pending = settings.max_pending
        self.hooks: JoinerHooks = JoinerHooks()
        self.decode_impression = decoder(_impression_check, max_bytes=max_event_bytes)
        self.decode_label = decoder(_label_check, max_bytes=max_event_bytes)
        self.pending: OrderedDict[str, Waiting] = OrderedDict()  # oldest first
        self.early: OrderedDict[str, tuple[int, float]] = OrderedDict()  # id -> (label, ts)
        # (ts, id) of the pending impressions and early labels, soonest due first; an id
        # resolved meanwhile stays until it comes up, then is skipped (see _compact)
        self.pending_due: list[tuple[float, str]] = []
        self.early_due: list[tuple[float, str]] = []
        # ids resolved lately (True: labelled, False: expired): duplicates and late labels
        self.done: OrderedDict[str, bool] = OrderedDict()
        self.newest: dict[str, float] = {}  # "topic:partition" -> the newest ts seen there
        self.counts = dict.fromkeys(OUTCOMES + UNMATCHED + ("evicted",), 0)
        self.held = 0  # pending impressions already labelled

    # ---- one poll ----------------------------------------------------------------------
    def handle(self, p: Host, records: list[Record]) -> None:
        """Impressions into the pending state (scored now), labels joined; the examples
        that result go to the pipeline's batcher."""
        ready: list[Any] = []
        events, preds = self._score(p, records)
        for k, rec in enumerate(records):
            tp = (rec.topic, rec.partition)
            expected = p.offsets.polled_next.get(tp)
            if expected is not None and rec.offset < expected:  # the log went back
                p.batcher.extend(ready)
                ready = []
                p._log_went_back(tp, expected, rec.offset)
                self.newest.pop(f"{rec.topic}:{rec.partition}", None)  # its time starts over
            p.offsets.polled_next[tp] = rec.offset + 1
            if rec.topic == self.topic:
                self._label(p, rec, ready)
                continue
            ev = events[k]
            if isinstance(ev, Rejected):
                p._reject(rec, ev)  # counted, dead-lettered, its offset applied
                continue
            if "label" in ev:  # labelled inline: an example now (scored prequentially)
                p.offsets.applied((rec.topic, rec.partition), rec.offset, rec.offset + 1)
                ready.append(self._item(p, rec.topic, rec.partition, rec.offset, rec.key, ev, None))
                continue
            self._impression(p, rec, ev, preds[k], ready)
        self._expire(p, ready)
        self.hooks.pending(len(self.pending) - self.held)
        if ready:
            p.batcher.extend(ready)

    def _score(
        self, p: Host, records: list[Record]
    ) -> tuple[dict[int, dict[str, Any] | Rejected], dict[int, float]]:
        """The poll's impressions decoded, and those without a label scored in one
        forward with the weights of now, by record index. Only a log that went back
        trains within a poll (its pending batch is flushed); impressions after that in
        the same poll keep the poll's earlier weights: older, never later, so nothing
        leaks. One forward per run of impressions between two labels was one per ~3
        impressions, most of the joiner's time."""
        events: dict[int, dict[str, Any] | Rejected] = {
            k: self.decode_impression(rec.value)
            for k, rec in enumerate(records)
            if rec.topic != self.topic
        }
        todo = {k: ev for k, ev in events.items() if type(ev) is dict and "label" not in ev}
        if not todo:
            return events, {}
        fb = p.featurizer.featurize([{**ev, "label": 0} for ev in todo.values()])
        preds = p.learner.predict(fb.inputs).reshape(-1).tolist()
        return events, dict(zip(todo, preds, strict=True))

    def _impression(
        self, p: Host, rec: Record, ev: dict[str, Any], pred: float, ready: list[Any]
    ) -> None:
        """An impression and its prediction into the pending state (joined at once with
        a label that came first)."""
        rid = ev["request_id"]
        if rid in self.pending or rid in self.done:  # an impression repeated
            p._reject(rec, Rejected(reasons.DUPLICATE, f"request_id {rid} seen before"))
            return
        p.offsets.applied((rec.topic, rec.partition), rec.offset, rec.offset + 1)
        self._saw(rec, ev["ts"])
        w = Waiting(ev, float(pred), rec.topic, rec.partition, rec.offset, rec.key)
        early = self.early.pop(rid, None)
        if early is not None:  # its label came first (the labels topic read ahead)
            if early[1] - ev["ts"] > self.window:  # late, as if it had come after
                self._unmatched("late")
                self._expired(p, rid, w, ready)
                return
            self._join(rid, w, *early)
        self.pending[rid] = w
        heapq.heappush(self.pending_due, (ev["ts"], rid))
        if len(self.pending) > self.max_pending:
            old_id, old = self.pending.popitem(last=False)
            self.counts["evicted"] += 1
            self._ended(p, old_id, old, ready)

    def _label(self, p: Host, rec: Record, ready: list[Any]) -> None:
        lab = self.decode_label(rec.value)
        if isinstance(lab, Rejected):
            self._unmatched("bad")
            p._reject(rec, lab)  # counted, dead-lettered, its offset applied
            return
        p.offsets.applied((rec.topic, rec.partition), rec.offset, rec.offset + 1)
        rid, label, ts = lab["request_id"], lab["label"], lab["ts"]
        self._saw(rec, ts)
        w = self.pending.get(rid)
        if w is not None and w.label is None:
            if ts - w.event["ts"] > self.window:
                del self.pending[rid]
                self._unmatched("late")
                self._expired(p, rid, w, ready)
            else:
                self._join(rid, w, label, ts)
            return
        if rid in self.done:
            self._unmatched("duplicate" if self.done[rid] else "late")
        elif rid in self.early:
            self._unmatched("duplicate")
        else:
            self.early[rid] = (label, ts)
            heapq.heappush(self.early_due, (ts, rid))
            self._unmatched("early")
            if len(self.early) > self.max_pending:
                self.early.popitem(last=False)
                self._unmatched("orphaned")

    # ---- outcomes ----------------------------------------------------------------------
    def _join(self, rid: str, w: Waiting, label: int, ts: float) -> None:
        """The impression's label: it waits with it for the window's end."""
        self.hooks.delay(max(0.0, ts - w.event["ts"]))
        self._done(rid, True, "labelled")
        w.label = label
        self.held += 1

    def _ended(self, p: Host, rid: str, w: Waiting, ready: list[Any]) -> None:
        """The window of a pending impression ended (or it was evicted)."""
        if w.label is None:
            self._expired(p, rid, w, ready)
            return
        self.held -= 1
        ready.append(self._item(p, w.topic, w.partition, w.offset, w.key,
                                {**w.event, "label": w.label}, w.prediction))  # fmt: skip

    def _expired(self, p: Host, rid: str, w: Waiting, ready: list[Any]) -> None:
        if self.negative:
            self._done(rid, False, "negative")
            ready.append(self._item(p, w.topic, w.partition, w.offset, w.key,
                                    {**w.event, "label": 0}, w.prediction))  # fmt: skip
        else:
            self._done(rid, False, "dropped")

    def _saw(self, rec: Record, ts: float) -> None:
        key = f"{rec.topic}:{rec.partition}"
        if ts > self.newest.get(key, -math.inf):
            self.newest[key] = ts

    @property
    def watermark(self) -> float:
        """Event time: the slowest partition's newest ts (-inf before any label)."""
        if not any(k.rpartition(":")[0] == self.topic for k in self.newest):
            return -math.inf
        return min(self.newest.values())

    def _unread(self, p: Host) -> bool:
        """Whether a partition the pipeline holds has records but none read yet: its event
        time is unknown, so nothing may expire (ingest workers fetch partitions apart,
        and a labels partition read seconds after the others made its clicks ``late``).
        A partition with nothing to read (position at the high watermark) holds nothing."""
        source = p.source
        if source is None or len(self.newest) >= len(source.assignment):
            return False
        marks = source.watermarks()
        for tp in source.assignment:
            if f"{tp[0]}:{tp[1]}" not in self.newest:
                mark = marks.get(tp)
                if mark is None or mark[0] < mark[1]:
                    return True
        return False

    def _expire(self, p: Host, ready: list[Any]) -> None:
        """Every impression and early label older than the window ends, oldest first (not
        in arrival order: partitions read unevenly interleave their event times)."""
        if self._unread(p):
            return
        cutoff = self.watermark - self.window
        for rid in _due(self.pending_due, cutoff):
            w = self.pending.get(rid)
            if w is not None and w.event["ts"] < cutoff:
                del self.pending[rid]
                self._ended(p, rid, w, ready)
        for rid in _due(self.early_due, cutoff):
            e = self.early.get(rid)
            if e is not None and e[1] < cutoff:
                del self.early[rid]
                self._unmatched("orphaned")
        self._compact()

    def _compact(self, force: bool = False) -> None:
        """Rebuild a heap of due times that holds more resolved ids than waiting ones."""
        if force or len(self.pending_due) > 2 * len(self.pending) + 1024:
            self.pending_due = _heap((w.event["ts"], rid) for rid, w in self.pending.items())
        if force or len(self.early_due) > 2 * len(self.early) + 1024:
            self.early_due = _heap((ts, rid) for rid, (_, ts) in self.early.items())

    def _done(self, rid: str, labelled: bool, outcome: str) -> None:
        self.counts[outcome] += 1
        self.hooks.resolved(outcome)
        self.done[rid] = labelled
        if len(self.done) > 2 * self.max_pending:  # older ids' labels count as early/orphaned
            self.done.popitem(last=False)

    def _unmatched(self, reason: str) -> None:
        self.counts[reason] += 1
        self.hooks.unmatched(reason)

    @staticmethod
    def _item(p: Host, topic: str, part: int, offset: int, key: bytes | None,
              event: dict[str, Any], prediction: float | None) -> Any:  # fmt: skip
        event["_served"] = prediction
        rec = Record(topic, part, offset, int(time.time() * 1000), key, None)
        return Item(rec, event)

    # ---- scoring with the impression-time prediction -----------------------------------
    @staticmethod
    def rescore(items: list[Any], fb: Any, res: Any) -> None:
        """Replace the step's prequential outputs and losses by those of the predictions
        made at impression time (where there is one)."""
        for j, idx in enumerate(fb.index.tolist()):
            p = items[idx].event.get("_served")
            if p is None:
                continue
            y = float(fb.targets[j])
            q = min(max(p, EPS), 1.0 - EPS)
            res.outputs[j] = p
            res.losses[j] = -(y * math.log(q) + (1.0 - y) * math.log(1.0 - q))

    # ---- checkpoint --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        ws = list(self.pending.values())
        return {
            "pending_ids": list(self.pending),
            "pending_events": [json.dumps({k: v for k, v in w.event.items()}) for w in ws],
            "pending_predictions": torch.tensor([w.prediction for w in ws], dtype=torch.float64),
            "pending_where": [[w.topic, w.partition, w.offset] for w in ws],
            "pending_keys": [_text(w.key) for w in ws],
            "pending_labels": torch.tensor(  # -1: no label yet
                [-1 if w.label is None else w.label for w in ws], dtype=torch.int8
            ),
            "early_ids": list(self.early),
            "early": torch.tensor(list(self.early.values()), dtype=torch.float64).reshape(-1, 2),
            "done_ids": list(self.done),
            "done_labelled": torch.tensor(list(self.done.values()), dtype=torch.bool),
            "newest": dict(self.newest),
            "counts": dict(self.counts),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        preds, labels = s["pending_predictions"].tolist(), s["pending_labels"].tolist()
        self.pending = OrderedDict()
        for i, rid in enumerate(s["pending_ids"]):
            (topic, part, off), key = s["pending_where"][i], s["pending_keys"][i]
            self.pending[rid] = Waiting(
                json.loads(s["pending_events"][i]), preds[i], topic, int(part), int(off),
                key.encode("utf-8", "surrogateescape") if key is not None else None,
                None if labels[i] < 0 else int(labels[i]),
            )  # fmt: skip
        self.held = sum(1 for w in self.pending.values() if w.label is not None)
        early = zip(s["early_ids"], s["early"].tolist(), strict=True)
        self.early = OrderedDict((rid, (int(lab), float(ts))) for rid, (lab, ts) in early)
        self.done = OrderedDict(zip(s["done_ids"], s["done_labelled"].tolist(), strict=True))
        self.newest = {k: float(v) for k, v in s["newest"].items()}
        self.counts.update({k: int(v) for k, v in s["counts"].items() if k in self.counts})
        self._compact(force=True)


def _due(heap: list[tuple[float, str]], cutoff: float) -> Iterator[str]:
    """Pop the ids due before ``cutoff``, soonest first."""
    while heap and heap[0][0] < cutoff:
        yield heapq.heappop(heap)[1]


def _heap(items: Iterable[tuple[float, str]]) -> list[tuple[float, str]]:
    h = list(items)
    heapq.heapify(h)
    return h


def _text(key: bytes | None) -> str | None:
    return None if key is None else key.decode("utf-8", "surrogateescape")
