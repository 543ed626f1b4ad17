"""CPU throttle, latency steps, and reading Selkies' metrics as Selkies writes them."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, Info, generate_latest

from agent import metrics
from agent.policy import CpuThrottle, LatencyAdapter


def test_sustained_cpu_above_80_caps_at_30_fps_and_restores() -> None:
    throttle = CpuThrottle(60, window_s=10)
    assert [throttle.observe(t, 95.0) for t in range(0, 9)] == [None] * 9  # not sustained yet
    change = throttle.observe(9.5, 95.0)
    assert change is not None
    assert (change.what, change.before, change.after) == ("framerate", "60", "30")
    assert throttle.framerate == 30
    assert all(throttle.observe(t, 70.0) is None for t in range(10, 25))  # between the bands
    restored = [c for c in (throttle.observe(t, 20.0) for t in range(25, 40)) if c]
    assert [(c.before, c.after) for c in restored] == [("30", "60")]


def test_the_rule_fires_and_restores_at_the_agents_own_cadence() -> None:
    """The agent samples every MONITOR_S (2 s) plus the time its loop takes: a window that
    drops its oldest sample as soon as it is older than 10 s never spans 10 s at that pace."""
    throttle = CpuThrottle(60, window_s=10)
    instants = [i * 2.04 for i in range(40)]
    loaded = [throttle.observe(t, 99.5) for t in instants[:8]]
    assert [c.after for c in loaded if c] == ["30"]
    assert loaded.index(next(c for c in loaded if c)) <= 5  # within ~10 s of load
    quiet = [throttle.observe(t, 40.0) for t in instants[8:16]]
    assert [c.after for c in quiet if c] == ["60"]


def test_a_short_cpu_spike_does_not_throttle() -> None:
    throttle = CpuThrottle(60, window_s=10)
    samples = [(t, 99.0 if t % 4 == 0 else 40.0) for t in range(0, 30)]
    assert all(throttle.observe(t, cpu) is None for t, cpu in samples)


def test_latency_above_100ms_steps_down_and_recovers() -> None:
    adapter = LatencyAdapter(8000, hold_s=5)
    first = adapter.observe(0, 180.0)
    assert [(c.what, c.before, c.after) for c in first] == [("bitrate_kbps", "8000", "6000")]
    assert adapter.observe(1, 180.0) == []  # held: let the step take effect
    second = adapter.observe(6, 150.0)
    assert [(c.what, c.after) for c in second] == [
        ("bitrate_kbps", "4800"),
        ("resolution", "1600x900"),
    ]
    assert adapter.observe(12, 70.0) == []  # between target and limit: stay
    up = adapter.observe(18, 30.0)
    assert [(c.what, c.after) for c in up] == [("bitrate_kbps", "6000"), ("resolution", "native")]
    assert adapter.observe(24, 30.0)[0].after == "8000"
    assert adapter.observe(30, 30.0) == []  # back at the configured stream


def _selkies_exposition(stats: dict[str, str] | None) -> str:
    registry = CollectorRegistry()
    info = Info("webrtc_statistics", "WebRTC Statistics from the client", registry=registry)
    if stats is not None:
        info.info(stats)
    Gauge("fps", "Frames per second observed by client", registry=registry).set(58)
    Gauge("latency", "Latency observed by client", registry=registry).set(31)
    return generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("frames", "jitter_s", "ok"),
    [("1200", "0.004", True), ("1200", "0.035", False), ("0", "0.001", False)],
)
def test_stream_check_from_selkies_metrics(frames: str, jitter_s: str, ok: bool) -> None:
    text = _selkies_exposition(
        {
            "inbound-rtp.kind": "audio",
            "inbound-rtp.jitter": "0.9",
            "inbound-rtp-RTCInboundRTPVideoStream_1.kind": "video",
            "inbound-rtp-RTCInboundRTPVideoStream_1.framesDecoded": frames,
            "inbound-rtp-RTCInboundRTPVideoStream_1.jitter": jitter_s,
        }
    )
    stats = metrics.parse(text)
    assert stats.frames_decoded == int(frames)
    assert stats.jitter_ms == pytest.approx(float(jitter_s) * 1000)
    assert (stats.fps, stats.rtt_latency_ms) == (58.0, 31.0)
    assert stats.stream_check()["ok"] is ok


def test_no_viewer_is_unknown_not_failed() -> None:
    stats = metrics.parse(_selkies_exposition(None))
    assert stats.viewer_connected is False
    assert stats.stream_check()["ok"] is None


def test_stale_figures_of_a_viewer_that_left_read_as_no_viewer() -> None:
    from agent.metrics import Liveness, StreamStats

    liveness = Liveness(stale_s=6.0)
    watching = StreamStats(100, 2.0, 60.0, 20.0, report_timestamp=1000.0)
    assert liveness.judge(0.0, watching) is watching
    still_screen = StreamStats(100, 2.0, 0.0, 20.0, report_timestamp=2000.0)
    assert liveness.judge(5.0, still_screen) is still_screen  # the report still moves
    assert liveness.judge(10.0, still_screen) is still_screen
    gone = liveness.judge(11.5, still_screen)  # nothing moved for 6.5 s: the gauges are stale
    assert gone is not None
    assert not gone.viewer_connected
    assert liveness.judge(12.0, None) is None  # unreachable stays unreachable
