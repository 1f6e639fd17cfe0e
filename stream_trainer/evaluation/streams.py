"""The event streams an evaluation runs on: our producers' generated kinds (with known
drifts), or a JSON-lines file; kept both raw (for our pipeline) and decoded (for the
baselines)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_trainer.evaluation.kinds import traits
from stream_trainer.events import Rejected
from stream_trainer.producers.files import read_jsonl
from stream_trainer.producers.generators import make_generator


@dataclass
class Stream:
    """Raw messages and the decoded events (``None`` where the decoder refused one)."""

    kind: str
    raw: list[bytes]
    events: list[dict[str, Any] | None]
    source: str
    drift_at: list[int] = field(default_factory=list)


# Streams with the properties real ones have and our default ones lack: the trivial
# baselines are hard to beat on them (``evaluate --scenario NAME``).
SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "rare-clicks": ("clicks", {"base": -7.0}),  # a click rate of ~0.3%
    "random-walk": ("ticks", {"signal": 0.0}),  # prices with nothing to forecast
    "level-shifts": ("sensors", {"level_shift_rate": 0.001}),  # rare jumps of a level
}


def generated(
    kind: str,
    count: int,
    seed: int = 0,
    drift_at: int | None = None,
    scenario: str | None = None,
) -> Stream:
    """Our producer's stream of ``kind`` (or of ``scenario``, see ``SCENARIOS``), its
    hidden truth changing at ``drift_at``."""
    params: dict[str, Any] = {}
    if scenario is not None:
        skind, params = SCENARIOS[scenario]
        if skind != kind:
            raise ValueError(f"scenario {scenario!r} is a {skind} stream, not {kind}")
    evs = list(make_generator(kind, seed=seed, count=count, drift_at=drift_at, **params))
    raw = [json.dumps(e, separators=(",", ":")).encode() for e in evs]
    extra = "".join(f", {k}={v!r}" for k, v in params.items())
    src = f"make_generator({kind!r}, seed={seed}, count={count}, drift_at={drift_at}{extra})"
    return _decoded(kind, raw, src, [drift_at] if drift_at else [])


def recurring_clicks(count: int, seed: int = 0) -> Stream:
    """Clicks whose concept goes A -> B -> A, a third of the stream each."""
    every = count // 3
    evs = list(make_generator("clicks", seed=seed, count=count, drift_every=every, recurring=True))
    raw = [json.dumps(e, separators=(",", ":")).encode() for e in evs]
    src = (
        f"make_generator('clicks', seed={seed}, count={count}, drift_every={every}, recurring=True)"
    )
    return _decoded("clicks", raw, src, [every, 2 * every])


def from_file(kind: str, path: str | Path, limit: int | None = None) -> Stream:
    """The first ``limit`` lines of a JSON-lines file (all: ``None``), as events of ``kind``."""
    raw = []
    for line in read_jsonl(path):
        raw.append(line)
        if limit is not None and len(raw) >= limit:
            break
    return _decoded(kind, raw, str(path), [])


def _decoded(kind: str, raw: list[bytes], source: str, drift_at: list[int]) -> Stream:
    from stream_trainer.domains.decoders import decoder_for

    decode = decoder_for(kind, channels=channels(kind, raw))
    events = [None if isinstance(d := decode(r), Rejected) else d for r in raw]
    return Stream(kind, raw, events, source, drift_at)


def channels(kind: str, raw: Sequence[bytes]) -> tuple[str, ...]:
    """Channels of a kind with readings per channel (else none): the first valid reading's,
    as the daemon's config would fix them."""
    if not traits(kind).channels:
        return ()
    for r in raw[:100]:
        try:
            values = json.loads(r).get("values")
        except (ValueError, AttributeError):
            continue
        if isinstance(values, dict) and values:
            return tuple(sorted(values))
    return ()
