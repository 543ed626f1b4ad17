"""Check 3 and 4 inputs from Selkies' Prometheus endpoint: the viewer's WebRTC statistics (the
browser sends getStats() each second; Selkies exposes them as the `webrtc_statistics` info metric
with flattened `type.field` labels) plus its `fps` and `latency` gauges."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

JITTER_LIMIT_MS = 20.0


@dataclass(frozen=True)
class StreamStats:
    frames_decoded: int | None
    jitter_ms: float | None  # WebRTC reports seconds; converted here
    fps: float | None
    rtt_latency_ms: float | None  # Selkies' `latency`: RTT + jitter buffer, not glass-to-glass
    # The browser's time stamp of the report: it moves each time the viewer sends statistics,
    # also while a still screen sends no frames. Gauges and the info metric keep their last
    # value after the viewer leaves, so liveness is judged by these two moving.
    report_timestamp: float | None = None

    @property
    def progress(self) -> tuple[int | None, float | None]:
        return self.frames_decoded, self.report_timestamp

    @property
    def viewer_connected(self) -> bool:
        return self.frames_decoded is not None

    def stream_check(self) -> dict[str, object]:
        if not self.viewer_connected:
            return {
                "name": "stream",
                "ok": None,
                "code": "NoViewer",
                "detail": "no viewer connected",
            }
        ok = (
            (self.frames_decoded or 0) > 0
            and self.jitter_ms is not None
            and self.jitter_ms < JITTER_LIMIT_MS
        )
        detail = f"framesDecoded={self.frames_decoded} jitter={self.jitter_ms} ms"
        return {
            "name": "stream",
            "ok": ok,
            "code": None if ok else "StreamUnhealthy",
            "detail": detail,
        }


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _normalise(key: str) -> str:
    # prometheus_client escapes "inbound-rtp.framesDecoded" to "inbound_rtp_framesDecoded"
    # (older versions quoted it as it was): compare in the escaped form.
    return key.replace("-", "_").replace(".", "_")


def parse(text: str) -> StreamStats:
    """Read Selkies' metrics. The video inbound-rtp report is the one with framesDecoded (audio
    has none); a second report of a type gets "-<id>" appended to its type by Selkies."""
    frames: int | None = None
    jitter: float | None = None
    fps: float | None = None
    latency: float | None = None
    stamp: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name in ("webrtc_statistics", "webrtc_statistics_info"):
                labels = {_normalise(k): v for k, v in sample.labels.items()}
                for key, value in labels.items():
                    if key.startswith("inbound_rtp") and key.endswith("_framesDecoded"):
                        prefix = key.removesuffix("_framesDecoded")
                        frames = int(_number(value) or 0)
                        seconds = _number(labels.get(prefix + "_jitter"))
                        jitter = None if seconds is None else seconds * 1000.0
                        stamp = _number(labels.get(prefix + "_timestamp"))
            elif family.name == "fps":
                fps = sample.value
            elif family.name == "latency":
                latency = sample.value
    return StreamStats(frames, jitter, fps, latency, stamp)


NO_VIEWER = StreamStats(None, None, None, None)


class Liveness:
    """Figures whose progress (framesDecoded, the report's time stamp) has not moved for
    `stale_s` are those of a viewer that left: they read as no viewer."""

    def __init__(self, stale_s: float = 6.0) -> None:
        self.stale_s = stale_s
        self._last: tuple[int | None, float | None] | None = None
        self._moved_at = float("-inf")

    def judge(self, now: float, stats: StreamStats | None) -> StreamStats | None:
        if stats is None or not stats.viewer_connected:
            return stats
        if stats.progress != self._last:
            self._last, self._moved_at = stats.progress, now
        return NO_VIEWER if now - self._moved_at > self.stale_s else stats
