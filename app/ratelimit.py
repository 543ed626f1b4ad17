"""Per-key request limits in this process (the `limits` library's moving window): a flood from
one holder of a credential cannot crowd out everyone else. Each replica counts its own share."""

from __future__ import annotations

import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter


class PerKeyLimit:
    def __init__(self, spec: str) -> None:
        self.item = parse(spec)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, key: str) -> int | None:
        """Count one request for `key`: None when it is allowed, else the seconds to wait."""
        if self.limiter.hit(self.item, key):
            return None
        reset_at, _ = self.limiter.get_window_stats(self.item, key)
        return max(1, math.ceil(reset_at - time.time()))
