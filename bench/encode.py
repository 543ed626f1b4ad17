"""The x264enc fallback pipeline on this machine: achieved fps against a 60 fps target and
per-buffer pipeline latency (GStreamer's latency tracer, source to sink), at 1280x720 and
1920x1080; beside each, the same pipeline without the encoder (capture + convert) as the floor.

The pipeline is the agent's own (agent.pipeline.build), with a live 60 fps `videotestsrc`
(moving pattern) for ximagesrc and a fakesink for webrtcbin. Usage: python -m bench.encode [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import time

from agent.pipeline import Caps, Element, StreamSettings, build

LATENCY = re.compile(r"latency, .*?time=\(guint64\)(\d+)")


def measure(description: str, seconds: float) -> tuple[float, float, float, int]:
    """(fps at the sink, p50 ms, p95 ms, buffers) from one gst-launch run."""
    env = {
        **os.environ,
        "GST_TRACERS": "latency(flags=pipeline)",
        "GST_DEBUG": "GST_TRACER:7",
        "GST_DEBUG_NO_COLOR": "1",
    }
    frames = int(seconds * 60)
    began = time.perf_counter()
    result = subprocess.run(
        ["gst-launch-1.0", "-q", *description.replace("NUM", str(frames)).split()],
        env=env,
        capture_output=True,
        text=True,
        timeout=seconds * 10 + 60,
        check=False,
    )
    elapsed = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"pipeline failed: {result.stderr[-500:]}")
    values = sorted(int(m[1]) / 1e6 for m in LATENCY.finditer(result.stderr))
    if not values:
        raise SystemExit("the latency tracer printed nothing")
    p50 = statistics.median(values)
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return frames / elapsed, p50, p95, len(values)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(
        f"\nx264enc fallback (speed-preset=ultrafast tune=zerolatency, 8000 kbps, GOP 30, no B-frames), "
        f"live 60 fps source, {args.seconds:.0f} s per run; latency = source to sink per buffer"
    )
    print(
        f"{'resolution':>10} {'pipeline':>14} {'fps':>6} {'p50 ms':>8} {'p95 ms':>8} {'p50 vs floor':>13}"
    )
    for width, height in ((1280, 720), (1920, 1080)):
        source = Element(
            "videotestsrc", (("is-live", "true"), ("pattern", "ball"), ("num-buffers", "NUM"))
        )
        raw = Caps(f"video/x-raw,width={width},height={height},framerate=60/1")
        sink = Element("fakesink", (("sync", "false"),), name="out")
        encoded = build("x264enc", StreamSettings(), source=source, sink=sink)
        stages = list(encoded.stages)
        stages.insert(1, raw)
        with_encoder = " ! ".join(s.render() for s in stages)
        floor = " ! ".join(s.render() for s in (source, raw, Element("videoconvert"), sink))
        floor_fps, floor_p50, floor_p95, _ = measure(floor, args.seconds)
        fps, p50, p95, _ = measure(with_encoder, args.seconds)
        label = f"{width}x{height}"
        print(
            f"{label:>10} {'floor':>14} {floor_fps:6.1f} {floor_p50:8.2f} {floor_p95:8.2f} {'1.00x':>13}"
        )
        print(
            f"{label:>10} {'x264 + rtp':>14} {fps:6.1f} {p50:8.2f} {p95:8.2f} {p50 / floor_p50:12.1f}x"
        )


if __name__ == "__main__":
    main()
