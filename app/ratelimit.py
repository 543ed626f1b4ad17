"""Per-key request limits in this process: a flood from one holder of a credential cannot crowd
out everyone else. Each replica counts its own share.

A sliding-window counter (the previous window's count, weighted by how much of it still
overlaps, plus the current window's): O(1) per request and two integers per key. The limit is
written as the `limits` library parses it (`30/minute`). That library's in-memory storage is
not used: it starts a thread every 10 ms that walks every key, which at 5,000 sessions cost
more CPU than the heartbeats it counted (measured by bench.scale)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import parse


@dataclass
class _Window:
    start: float
    current: int = 0
    previous: int = 0


class PerKeyLimit:
    def __init__(self, spec: str) -> None:
        item = parse(spec)
        self.amount = item.amount
        self.period_s = float(item.get_expiry())
        self._windows: dict[str, _Window] = {}
        self._pruned_at = time.monotonic()

    def hit(self, key: str) -> int | None:
        """Count one request for `key`: None when it is allowed, else the seconds to wait."""
        now = time.monotonic()
        self._prune(now)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(start=now)
        elapsed = now - window.start
        if elapsed >= self.period_s:
            periods = int(elapsed // self.period_s)
            window.previous = window.current if periods == 1 else 0
            window.current = 0
            window.start += periods * self.period_s
            elapsed = now - window.start
        overlap = 1.0 - elapsed / self.period_s
        if window.previous * overlap + window.current + 1 > self.amount:
            return max(1, math.ceil(self.period_s - elapsed))
        window.current += 1
        return None

    def _prune(self, now: float) -> None:
        """Once a period, forget keys not seen for two (amortized O(1) per request)."""
        if now - self._pruned_at < self.period_s:
            return
        self._pruned_at = now
        horizon = now - 2 * self.period_s
        for key in [k for k, w in self._windows.items() if w.start < horizon]:
            del self._windows[key]
