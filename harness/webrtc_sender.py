"""The sending peer of the glass-to-glass harness: the agent's GStreamer pipeline, ending in
webrtcbin, run for real with Debian's python3-gi (the venv has no PyGObject).

It speaks JSON lines: it prints {"offer": sdp, "candidates": [...]} once ICE gathering is done,
reads {"answer": sdp} on stdin, prints {"state": ...} as the connection changes, and on
{"stop": true} (or stdin closing) prints {"stats": ...} from webrtcbin and exits.

The pipeline must contain `cairooverlay name=stamp` where the capture time is drawn into the
picture (harness/pixelcode.py), or `webrtcbin name=sendrecv`, or both. With only the stamp it is a
painter: it draws stamped pictures onto a display (ximagesink) for the sender to capture.
Usage: /usr/bin/python3 harness/webrtc_sender.py --pipeline '...' --turn turn://u:p@h:3478
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from harness import pixelcode  # noqa: E402


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Sender:
    def __init__(self, description: str, stun: str | None, turn: str | None, relay: bool):
        self.pipeline = Gst.parse_launch(description)
        self.webrtc = self.pipeline.get_by_name("sendrecv")
        self.candidates: list[str] = []
        self.sequence = 0
        self.stamped = 0
        self.offered = False
        self.offer_requested = False
        self.loop = GLib.MainLoop()
        stamp = self.pipeline.get_by_name("stamp")
        if stamp is not None:
            stamp.connect("draw", self.on_draw)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)
        GLib.io_add_watch(sys.stdin.fileno(), GLib.IO_IN | GLib.IO_HUP, self.on_stdin)
        if self.webrtc is None:
            return
        if stun:
            self.webrtc.set_property("stun-server", stun)
        if turn:
            self.webrtc.set_property("turn-server", turn)
        if relay:
            self.webrtc.set_property(
                "ice-transport-policy", GstWebRTC.WebRTCICETransportPolicy.RELAY
            )
        self.webrtc.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.webrtc.connect("on-ice-candidate", self.on_ice_candidate)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::connection-state", self.on_state)
        self.webrtc.connect("notify::ice-connection-state", self.on_state)

    # -- the stamp: capture time into the picture, just before the encoder's input conversion
    def on_draw(self, _overlay: Any, context: Any, _timestamp: Any, _duration: Any) -> None:
        bits = pixelcode.encode(GLib.get_monotonic_time(), self.sequence)
        self.sequence += 1
        self.stamped += 1
        context.set_source_rgb(0, 0, 0)
        context.rectangle(0, 0, pixelcode.WIDTH, pixelcode.BLOCK)
        context.fill()
        context.set_source_rgb(1, 1, 1)
        for i, bit in enumerate(bits):
            if bit:
                context.rectangle(i * pixelcode.BLOCK, 0, pixelcode.BLOCK, pixelcode.BLOCK)
        context.fill()

    # -- signalling
    def on_negotiation_needed(self, element: Any) -> None:
        # An offer made before the payloader's caps reach webrtcbin has no fmtp (no
        # packetization-mode, no profile): wait for the caps when they are not there yet.
        pad = element.sinkpads[0] if element.sinkpads else None
        if pad is not None and pad.get_current_caps() is None:
            pad.connect("notify::caps", self.on_caps)
            return
        self.create_offer()

    def on_caps(self, pad: Any, _pspec: Any) -> None:
        if pad.get_current_caps() is not None and not self.offer_requested:
            GLib.idle_add(self.create_offer)

    def create_offer(self) -> bool:
        if self.offer_requested:
            return False
        self.offer_requested = True
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, self.webrtc, None)
        self.webrtc.emit("create-offer", None, promise)
        return False

    def on_offer_created(self, promise: Any, element: Any, _data: Any) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer") if reply is not None else None
        if offer is None:
            emit({"error": f"webrtcbin made no offer: {reply.to_string() if reply else None}"})
            self.loop.quit()
            return
        element.emit("set-local-description", offer, Gst.Promise.new())

    def on_ice_candidate(self, _element: Any, _mline: Any, candidate: str) -> None:
        self.candidates.append(candidate)

    def on_gathering(self, element: Any, _pspec: Any) -> None:
        state = element.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.offered:
            self.offered = True
            sdp = element.get_property("local-description").sdp.as_text()
            emit({"offer": sdp, "candidates": self.candidates})

    def on_state(self, element: Any, pspec: Any) -> None:
        emit({"state": pspec.name, "value": element.get_property(pspec.name).value_nick})

    def on_stdin(self, fd: Any, condition: Any) -> bool:
        line = sys.stdin.readline() if condition & GLib.IO_IN else ""
        if not line:
            self.stop()
            return False
        message = json.loads(line)
        if "answer" in message:
            ok, sdp = GstSdp.SDPMessage.new_from_text(message["answer"])
            answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdp)
            self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
            for candidate in message.get("candidates", []):
                self.webrtc.emit("add-ice-candidate", 0, candidate)
        if message.get("stop"):
            self.stop()
            return False
        return True

    def on_error(self, _bus: Any, message: Any) -> None:
        error, debug = message.parse_error()
        emit({"error": f"{error.message} ({debug})"})
        self.loop.quit()

    def stop(self) -> None:
        reports: list[dict[str, Any]] = []
        if self.webrtc is not None:
            promise = Gst.Promise.new()
            self.webrtc.emit("get-stats", None, promise)
            promise.wait()
            reports = _stats(promise.get_reply())
        emit({"stats": reports, "stamped": self.stamped})
        self.loop.quit()

    def run(self) -> int:
        self.pipeline.set_state(Gst.State.PLAYING)
        try:
            self.loop.run()
        finally:
            self.pipeline.set_state(Gst.State.NULL)
        return 0


def _stats(reply: Gst.Structure | None) -> list[dict[str, Any]]:
    """webrtcbin's stats: one structure per report, flattened to JSON-able fields."""
    reports: list[dict[str, Any]] = []
    if reply is None:
        return reports

    def each(_field_id: Any, value: Any) -> bool:
        if isinstance(value, Gst.Structure):
            fields: dict[str, Any] = {"kind": value.get_name()}
            for i in range(value.n_fields()):
                name = value.nth_field_name(i)
                item = value.get_value(name)
                if isinstance(item, (str, int, float, bool)):
                    fields[name] = item
                elif hasattr(item, "value_nick"):
                    fields[name] = item.value_nick
            reports.append(fields)
        return True

    reply.foreach(each)
    return reports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--stun")
    parser.add_argument("--turn")
    parser.add_argument("--relay-only", action="store_true")
    args = parser.parse_args()
    Gst.init(None)
    return Sender(args.pipeline, args.stun, args.turn, args.relay_only).run()


if __name__ == "__main__":
    sys.exit(main())
