"""Delayed labels: a labelled click stream as impressions, and clicks that come later.

Every event becomes an impression (no label, a ``request_id``); an event that was
clicked also yields a label ``{"request_id", "label": 1, "ts"}`` after a heavy-tailed
delay (Pareto, most within seconds, a tail to ``max_delay_s``). Unclicked impressions
get no label at all, as in a real click log: the joiner's window turns them into
negatives. Both streams come out merged in event-time order.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

IMPRESSION, LABEL = "impression", "label"


def delays(
    rng: np.random.Generator, n: int, lo: float, hi: float, alpha: float = 1.0
) -> np.ndarray:
    """Pareto(alpha) delays from ``lo``, clipped at ``hi`` seconds (heavy-tailed).

    >>> d = delays(np.random.default_rng(0), 10_000, 1.0, 600.0)
    >>> bool(d.min() >= 1.0 and d.max() <= 600.0 and np.median(d) < 3.0)
    True
    """
    return np.minimum(lo * (1.0 + rng.pareto(alpha, n)), hi)


def delayed_labels(
    events: Iterable[dict[str, Any]],
    *,
    seed: int = 0,
    min_delay_s: float = 1.0,
    max_delay_s: float = 600.0,
    alpha: float = 1.0,
    id_prefix: str = "r",
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(IMPRESSION | LABEL, document)`` in event-time order.

    >>> evs = [{"ts": 10.0 + i, "user_id": "u", "item_id": "i", "label": i % 2} for i in range(4)]
    >>> out = delayed_labels(evs, min_delay_s=0.5, max_delay_s=0.5)
    >>> [k[0] + str(d.get("label", "")) for k, d in out]
    ['i', 'i', 'l1', 'i', 'i', 'l1']
    """
    rng = np.random.default_rng(seed)
    waiting: list[tuple[float, int, dict[str, Any]]] = []  # (label ts, tie-break, label)
    n = 0
    for ev in events:
        ts = float(ev["ts"])
        while waiting and waiting[0][0] <= ts:
            yield LABEL, heapq.heappop(waiting)[2]
        rid = f"{id_prefix}{n}"
        n += 1
        imp = {k: v for k, v in ev.items() if k != "label"}
        imp["request_id"] = rid
        yield IMPRESSION, imp
        if ev.get("label"):
            at = round(ts + float(delays(rng, 1, min_delay_s, max_delay_s, alpha)[0]), 3)
            heapq.heappush(waiting, (at, n, {"request_id": rid, "label": 1, "ts": at}))
    while waiting:
        yield LABEL, heapq.heappop(waiting)[2]
