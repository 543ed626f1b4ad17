"""Small GStreamer helpers run with a Python that has `gi` (the pod's, or Debian's python3):

    python3 -m agent.gst_tools parse '<pipeline>'        -> exit 0 if Gst.parse_launch accepts it
    python3 -m agent.gst_tools run '<pipeline>' SECONDS   -> prints JSON: buffers at the element
                                                             named `out`, their fps and caps,
                                                             errors

Kept free of the agent's other dependencies, so any Python with PyGObject can run it."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def _gst() -> Any:
    import gi

    gi.require_version("Gst", "1.0")
    from gi.repository import Gst

    Gst.init(None)
    return Gst


def parse(description: str) -> int:
    Gst = _gst()
    try:
        Gst.parse_launch(description)
    except Exception as error:  # GLib.Error
        print(str(error), file=sys.stderr)
        return 1
    return 0


def run(description: str, seconds: float) -> int:
    Gst = _gst()
    pipeline = Gst.parse_launch(description)
    sink = pipeline.get_by_name("out")
    counts: dict[str, Any] = {"buffers": 0, "first": None, "last": None, "caps": None}

    def on_buffer(pad: Any, _info: Any) -> Any:
        if counts["caps"] is None:
            caps = pad.get_current_caps()
            counts["caps"] = caps.to_string() if caps is not None else None
        now = time.monotonic()
        counts["buffers"] += 1
        counts["first"] = counts["first"] or now
        counts["last"] = now
        return Gst.PadProbeReturn.OK

    sink.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, on_buffer)
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    errors = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = bus.timed_pop_filtered(
            100 * Gst.MSECOND, Gst.MessageType.ERROR | Gst.MessageType.EOS
        )
        if message is None:
            continue
        if message.type == Gst.MessageType.ERROR:
            errors.append(str(message.parse_error()[0]))
        break
    pipeline.set_state(Gst.State.NULL)
    span = (counts["last"] or 0) - (counts["first"] or 0)
    fps = (counts["buffers"] - 1) / span if span > 0 else 0.0
    print(
        json.dumps(
            {
                "buffers": counts["buffers"],
                "fps": round(fps, 2),
                "caps": counts["caps"],
                "errors": errors,
            }
        )
    )
    return 1 if errors else 0


if __name__ == "__main__":
    if sys.argv[1] == "parse":
        raise SystemExit(parse(sys.argv[2]))
    raise SystemExit(run(sys.argv[2], float(sys.argv[3])))
