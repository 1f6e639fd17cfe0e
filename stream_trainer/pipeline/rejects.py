"""Notice when most of a pipeline's recent events are rejected, and say why. Pure.

A pipeline that consumes but rejects nearly everything looks busy on every rate panel;
the warning names the share and the main reason, once per ``quiet_s``.

>>> w = RejectWatch(share=0.5, min_events=4, quiet_s=60.0)
>>> w.consumed(4); w.rejected("duplicate"); w.rejected("duplicate"); w.rejected("bad_json")
>>> w.check(now=0.0)
(0.75, 'duplicate', {'duplicate': 2, 'bad_json': 1})
>>> w.consumed(4); w.rejected("duplicate"); w.rejected("duplicate"); w.rejected("duplicate")
>>> w.check(now=1.0) is None  # quiet for a minute after a warning
True
"""

from __future__ import annotations

HINTS = {
    "duplicate": "the same bytes as recently learned events: is a producer replaying "
    "old events? (docs/concepts/checkpoints.md: the duplicate window)",
}


class RejectWatch:
    def __init__(self, share: float = 0.5, min_events: int = 1000, quiet_s: float = 60.0) -> None:
        self.share, self.min_events, self.quiet_s = share, min_events, quiet_s
        self._consumed = 0
        self._reasons: dict[str, int] = {}
        self._last_warning = -float("inf")

    def consumed(self, n: int) -> None:
        self._consumed += n

    def rejected(self, reason: str) -> None:
        self._reasons[reason] = self._reasons.get(reason, 0) + 1

    def check(self, now: float) -> tuple[float, str, dict[str, int]] | None:
        """Once the window holds ``min_events``: (share rejected, main reason, counts by
        reason) when the share is at least ``share`` and no warning came in the last
        ``quiet_s``; else None. Either way a new window starts."""
        if self._consumed < self.min_events:
            return None
        reasons, consumed = self._reasons, self._consumed
        self._reasons, self._consumed = {}, 0
        share = sum(reasons.values()) / consumed
        if share < self.share or now - self._last_warning < self.quiet_s:
            return None
        self._last_warning = now
        return share, max(reasons, key=reasons.__getitem__), reasons
