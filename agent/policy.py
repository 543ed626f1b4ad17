"""Adaptation rules (spec: Check 4 and Fallback 3), pure and clocked by the caller:
- CPU above 80% sustained: cap the frame rate at 30 fps; restore when the load falls.
- Latency above 100 ms: step resolution or bitrate down; step back up when it recovers."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

CPU_LIMIT_PERCENT = 80.0
CPU_RESTORE_PERCENT = 60.0
THROTTLED_FPS = 30
LATENCY_TARGET_MS = 50.0
LATENCY_LIMIT_MS = 100.0


@dataclass(frozen=True)
class Change:
    what: str  # "framerate", "bitrate_kbps", "resolution"
    before: str
    after: str
    why: str


class CpuThrottle:
    """Caps the frame rate while host CPU stays above the limit for `window_s`."""

    def __init__(self, framerate: int, *, window_s: float = 10.0) -> None:
        self.configured = framerate
        self.framerate = framerate
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def observe(self, now: float, cpu_percent: float) -> Change | None:
        # A sample measures the time since the one before it (psutil.cpu_percent()), so the
        # newest one at or before the window's start stays: its successor's measure reaches
        # back over that start. Dropping it left a window sampled every 2 s plus the loop's
        # own time (the agent's cadence) never covered, and the rule never fired.
        self._samples.append((now, cpu_percent))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        covered = now - self._samples[0][0] >= self.window_s * 0.9
        if not covered:
            return None
        values = [value for _, value in list(self._samples)[1:]]
        if self.framerate > THROTTLED_FPS and min(values) > CPU_LIMIT_PERCENT:
            before, self.framerate = self.framerate, THROTTLED_FPS
            return Change(
                "framerate",
                str(before),
                str(THROTTLED_FPS),
                f"host CPU above {CPU_LIMIT_PERCENT:.0f}% for {self.window_s:.0f} s",
            )
        if self.framerate < self.configured and max(values) < CPU_RESTORE_PERCENT:
            before, self.framerate = self.framerate, self.configured
            return Change(
                "framerate",
                str(before),
                str(self.configured),
                f"host CPU below {CPU_RESTORE_PERCENT:.0f}% for {self.window_s:.0f} s",
            )
        return None


# Each step down: (scale of the display's own size, bitrate factor). Step 0 is the configured
# stream. On a 1920x1080 display the steps are 1600x900, 1280x720 and 960x540; on a smaller one
# (a viewer's window, with resize on) as much smaller, never larger than the display was.
LADDER = (
    (1.0, 1.0),
    (1.0, 0.75),
    (5 / 6, 0.6),
    (2 / 3, 0.5),
    (1 / 2, 0.35),
)
NATIVE = (1920, 1080)  # until the runner has read the display's size


class LatencyAdapter:
    """Steps down while latency stays above the limit, back up while it stays under the target.
    One step per `hold_s`, so a step has time to show its effect. `native` is the display's size
    before the first step, which the steps scale and "native" restores."""

    def __init__(self, bitrate_kbps: int, *, hold_s: float = 5.0) -> None:
        self.base_bitrate_kbps = bitrate_kbps
        self.step = 0
        self.hold_s = hold_s
        self.native = NATIVE
        self._last_change = float("-inf")

    @property
    def bitrate_kbps(self) -> int:
        return int(self.base_bitrate_kbps * LADDER[self.step][1])

    @property
    def resolution(self) -> tuple[int, int] | None:
        scale = LADDER[self.step][0]
        if scale == 1.0:
            return None
        # even sizes: what H.264 encoders take
        return (round(self.native[0] * scale / 2) * 2, round(self.native[1] * scale / 2) * 2)

    def observe(self, now: float, latency_ms: float | None) -> list[Change]:
        if latency_ms is None or now - self._last_change < self.hold_s:
            return []
        if latency_ms > LATENCY_LIMIT_MS and self.step < len(LADDER) - 1:
            return self._move(now, +1, f"latency {latency_ms:.0f} ms > {LATENCY_LIMIT_MS:.0f} ms")
        if latency_ms < LATENCY_TARGET_MS and self.step > 0:
            return self._move(now, -1, f"latency {latency_ms:.0f} ms < {LATENCY_TARGET_MS:.0f} ms")
        return []

    def _move(self, now: float, direction: int, why: str) -> list[Change]:
        before_bitrate, before_resolution = self.bitrate_kbps, self.resolution
        self.step += direction
        self._last_change = now
        changes = [Change("bitrate_kbps", str(before_bitrate), str(self.bitrate_kbps), why)]
        if before_resolution != self.resolution:
            changes.append(
                Change("resolution", _res(before_resolution), _res(self.resolution), why)
            )
        return changes


def _res(value: tuple[int, int] | None) -> str:
    return "native" if value is None else f"{value[0]}x{value[1]}"
