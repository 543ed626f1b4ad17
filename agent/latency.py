"""The pipeline's own latency (capture to payloader), measured with GStreamer's latency tracer.
Selkies' `latency` metric is the viewer's RTT plus jitter-buffer delay; glass-to-glass is at
least that plus this (display scan-out is outside both)."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import time
from dataclasses import dataclass

TRACER_LINE = re.compile(r"latency, .*?time=\(guint64\)(\d+)")


@dataclass(frozen=True)
class Measurement:
    fps: float
    p50_ms: float
    p95_ms: float
    buffers: int


def measure(description: str, frames: int, *, timeout_s: float = 120) -> Measurement:
    """Run a pipeline (gst-launch syntax) until EOS under the latency tracer."""
    env = {
        **os.environ,
        "GST_TRACERS": "latency(flags=pipeline)",
        "GST_DEBUG": "GST_TRACER:7",
        "GST_DEBUG_NO_COLOR": "1",
    }
    began = time.perf_counter()
    result = subprocess.run(
        ["gst-launch-1.0", "-q", *description.split()],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"pipeline failed: {result.stderr[-500:]}")
    values = sorted(int(m[1]) / 1e6 for m in TRACER_LINE.finditer(result.stderr))
    if not values:
        raise RuntimeError("the latency tracer printed nothing")
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return Measurement(frames / elapsed, statistics.median(values), p95, len(values))
