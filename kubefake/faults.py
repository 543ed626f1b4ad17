"""Injected trouble: latency on every API call, and a share of calls that fail as a busy API
server's do (500 from etcd, 429 with Retry-After, or an answer that comes too late)."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import kmock


@dataclass
class FaultPlan:
    """Latency for every API call, and a share of calls that fail."""

    rate: float = 0.0
    kinds: tuple[str, ...] = ("500", "429", "timeout")
    latency_s: float = 0.0
    timeout_hold_s: float = 3.0  # a "timeout" applies the call, then answers this late
    seed: int | None = None


class FaultInjector:
    """Draws the faults of a plan (the plan may be swapped between calls; its seed, when set,
    seeds the draws at the start)."""

    def __init__(self, seed: int | None) -> None:
        self._random = random.Random(seed)
        self.injected = 0  # faults raised or delays chosen so far

    async def inject(self, plan: FaultPlan, *, watch: bool) -> float:
        """Wait the plan's latency; then maybe fail: raise a 429 or 500, or return how long
        to hold the answer (a timeout). Watches are only delayed."""
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        if watch or not plan.rate or self._random.random() >= plan.rate:
            return 0.0
        self.injected += 1
        kind = self._random.choice(plan.kinds)
        if kind == "429":
            raise kmock.KubernetesError(
                status=429,
                reason="TooManyRequests",
                message="injected: slow down",
                details={"retryAfterSeconds": 1},
            )
        if kind == "timeout":
            return plan.timeout_hold_s
        raise kmock.KubernetesError(
            status=500, reason="InternalError", message="injected: etcd hiccup"
        )
