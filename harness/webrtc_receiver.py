"""The receiving peer of the glass-to-glass harness: a real WebRTC stack (aiortc) that uses only
the TURN relay, decodes the H.264 frames (libavcodec through PyAV) and reads back the capture
time drawn into each picture (harness/pixelcode.py).

Two adjustments to aiortc, both for talking to GStreamer the way a browser does:
- GStreamer 1.22's DTLS certificate is RSA; aiortc offers only ECDHE-ECDSA suites. The cipher
  list is widened with the ECDHE-RSA AEAD suites browsers offer.
- aiortc's video jitter buffer hands a frame on only when the first packet of the *next* frame
  arrives, holding every frame one frame interval (16.7 ms at 60 fps). A browser (libwebrtc)
  releases a frame once it is complete, which the RTP marker bit tells. `marker_release`
  (default) does the same; `False` measures aiortc as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
    jitterbuffer,
    rtcdtlstransport,
    rtcrtpreceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

from harness import pixelcode

BROWSER_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
VIDEO_CLOCK_HZ = 90_000


class MarkerJitterBuffer(jitterbuffer.JitterBuffer):
    """aiortc's jitter buffer, plus: a frame whose packets have all arrived in order up to the
    one carrying the marker bit is released at once."""

    def add(self, packet: RtpPacket) -> tuple[bool, jitterbuffer.JitterFrame | None]:
        pli, frame = super().add(packet)
        if frame is None and packet.marker:
            frame = self._complete_head()
        return pli, frame

    def _complete_head(self) -> jitterbuffer.JitterFrame | None:
        if self._origin is None:
            return None
        packets: list[RtpPacket] = []
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self.capacity]
            if packet is None or (packets and packet.timestamp != packets[0].timestamp):
                return None
            packets.append(packet)
            if packet.marker:
                self.remove(count + 1)
                data = b"".join(p._data for p in packets)  # type: ignore[attr-defined]
                return jitterbuffer.JitterFrame(data=data, timestamp=packets[0].timestamp)
        return None


@contextlib.contextmanager
def browser_like_aiortc(marker_release: bool = True) -> Iterator[None]:
    """Apply the two adjustments for the duration of a run."""
    original_context = rtcdtlstransport.RTCCertificate._create_ssl_context
    original_buffer = rtcrtpreceiver.JitterBuffer  # type: ignore[attr-defined]

    def widened(self: Any, srtp_profiles: Any) -> Any:
        context = original_context(self, srtp_profiles)
        context.set_cipher_list(BROWSER_CIPHERS)
        return context

    rtcdtlstransport.RTCCertificate._create_ssl_context = widened  # type: ignore[method-assign]
    if marker_release:
        rtcrtpreceiver.JitterBuffer = MarkerJitterBuffer  # type: ignore[attr-defined]
    try:
        yield
    finally:
        rtcdtlstransport.RTCCertificate._create_ssl_context = original_context  # type: ignore[method-assign]
        rtcrtpreceiver.JitterBuffer = original_buffer  # type: ignore[attr-defined]


@dataclass
class Received:
    """What the viewer saw."""

    frames_decoded: int = 0
    frames_stamped: int = 0  # frames whose capture time could be read back
    frames_repeated: int = 0  # the same picture again (a capture between two paints)
    latencies_ms: list[float] = field(default_factory=list)
    captured_us: list[int] = field(default_factory=list)  # capture times read back
    started: float | None = None  # monotonic time of the first measured frame
    ended: float | None = None
    packets_received: int = 0
    packets_lost: int = 0
    jitter_s: float | None = None
    local_candidate_type: str | None = None
    remote_candidate_type: str | None = None
    local_candidate_types: list[str] = field(default_factory=list)
    connection_state: str = "new"
    width: int | None = None
    height: int | None = None

    @property
    def fps(self) -> float:
        if self.started is None or self.ended is None or self.ended <= self.started:
            return 0.0
        return (len(self.latencies_ms) - 1) / (self.ended - self.started)

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    def summary(self) -> dict[str, Any]:
        return {
            "frames_decoded": self.frames_decoded,
            "frames_measured": len(self.latencies_ms),
            "frames_repeated": self.frames_repeated,
            "fps": round(self.fps, 1),
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.percentile(95)),
            "p99_ms": _round(self.percentile(99)),
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "jitter_ms": _round(None if self.jitter_s is None else self.jitter_s * 1000),
            "local_candidate": self.local_candidate_type,
            "remote_candidate": self.remote_candidate_type,
            "resolution": f"{self.width}x{self.height}" if self.width else None,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def ice_servers(connection: dict[str, Any]) -> list[RTCIceServer]:
    """The session's `connection.ice_servers` (DESIGN's shape) as aiortc's configuration."""
    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in connection["ice_servers"]
    ]


class Receiver:
    """One viewer: answer the sender's offer, then count and time frames until stopped."""

    def __init__(
        self,
        servers: list[RTCIceServer],
        *,
        relay_only: bool = True,
        warmup_s: float = 1.0,
        on_frame: Callable[[Received], None] | None = None,
    ) -> None:
        policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))
        self.result = Received()
        self.warmup_s = warmup_s
        self.on_frame = on_frame
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._first_frame_at: float | None = None
        self._last_stamp: int | None = None

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "video":
                self._tasks.append(asyncio.create_task(self._consume(track)))

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            self.result.connection_state = self.pc.connectionState
            if self.pc.connectionState == "connected":
                self.connected.set()
            elif self.pc.connectionState in ("failed", "closed"):
                self.failed.set()

    async def answer(self, offer_sdp: str, candidates: list[str]) -> str:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for line in candidates:
            text = line.removeprefix("a=").removeprefix("candidate:")
            candidate = candidate_from_sdp(text)
            candidate.sdpMLineIndex = 0
            await self.pc.addIceCandidate(candidate)
        # The sender offers once its gathering is complete: there will be no more candidates.
        # Saying so lets ICE fail at once when no pair can work, instead of waiting for more.
        await self.pc.addIceCandidate(None)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        gatherer = self.pc.getTransceivers()[0].receiver.transport.transport.iceGatherer
        self.result.local_candidate_types = [c.type for c in gatherer.getLocalCandidates()]
        return self.pc.localDescription.sdp

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now_us = time.monotonic_ns() // 1000
            self.result.frames_decoded += 1
            assert isinstance(frame, VideoFrame)
            self.result.width, self.result.height = frame.width, frame.height
            plane = frame.planes[0]
            stamp = pixelcode.decode(pixelcode.read_luma(memoryview(plane), plane.line_size))
            if stamp is None:
                continue
            self.result.frames_stamped += 1
            if stamp[0] == self._last_stamp:  # glass to glass counts a change's first showing
                self.result.frames_repeated += 1
                continue
            self._last_stamp = stamp[0]
            if self._first_frame_at is None:
                self._first_frame_at = now_us / 1e6
            if now_us / 1e6 - self._first_frame_at < self.warmup_s:
                continue
            self.result.latencies_ms.append((now_us - stamp[0]) / 1000.0)
            self.result.captured_us.append(stamp[0])
            if self.result.started is None:
                self.result.started = now_us / 1e6
            self.result.ended = now_us / 1e6
            if self.on_frame is not None:
                self.on_frame(self.result)

    async def collect_stats(self) -> Received:
        """packetsLost, jitter (RTP clock units in aiortc: converted to seconds) and the ICE
        pair in use."""
        report = await self.pc.getStats()
        for stats in report.values():
            if stats.type == "inbound-rtp" and getattr(stats, "kind", None) == "video":
                self.result.packets_received = stats.packetsReceived
                self.result.packets_lost = stats.packetsLost
                self.result.jitter_s = stats.jitter / VIDEO_CLOCK_HZ
        transport = self.pc.getTransceivers()[0].receiver.transport.transport
        pair = transport._connection._nominated.get(1)
        if pair is not None:
            self.result.local_candidate_type = pair.local_candidate.type
            self.result.remote_candidate_type = pair.remote_candidate.type
        return self.result

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
