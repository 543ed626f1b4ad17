"""The x264enc fallback pipeline on this machine: achieved fps against a 60 fps target and
per-buffer pipeline latency (GStreamer's latency tracer, source to sink), at 1280x720 and
1920x1080; beside each, the same pipeline without the encoder (capture + convert) as the floor.

The pipeline is the agent's own (agent.pipeline.build), with a live 60 fps `videotestsrc`
(moving pattern) for ximagesrc and a fakesink for webrtcbin.
Usage: python -m bench.encode [--seconds S]
"""

from __future__ import annotations

import argparse

from agent import latency
from agent.pipeline import Caps, Element, StreamSettings, build


def measure(description: str, seconds: float) -> tuple[float, float, float, int]:
    frames = int(seconds * 60)
    result = latency.measure(
        description.replace("NUM", str(frames)), frames, timeout_s=seconds * 10 + 60
    )
    return result.fps, result.p50_ms, result.p95_ms, result.buffers


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(
        "\nx264enc fallback (speed-preset=ultrafast tune=zerolatency, 8000 kbps, GOP 30, "
        "no B-frames), "
        f"live 60 fps source, {args.seconds:.0f} s per run; latency = source to sink per buffer"
    )
    print(
        "{:>10} {:>14} {:>6} {:>8} {:>8} {:>13}".format(
            "resolution", "pipeline", "fps", "p50 ms", "p95 ms", "p50 vs floor"
        )
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
            f"{label:>10} {'floor':>14} {floor_fps:6.1f} {floor_p50:8.2f} {floor_p95:8.2f}"
            f" {'1.00x':>13}"
        )
        print(
            f"{label:>10} {'x264 + rtp':>14} {fps:6.1f} {p50:8.2f} {p95:8.2f}"
            f" {p50 / floor_p50:12.1f}x"
        )


if __name__ == "__main__":
    main()
