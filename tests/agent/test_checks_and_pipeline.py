"""Checks 1-2 with PATH-injected GPU stand-ins, the encoder choice, and pipelines that real
GStreamer parses and runs."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import checks, pipeline
from agent.pipeline import StreamSettings
from tests.tools import require_system_python_gi, tool, xvfb

REPO = Path(__file__).resolve().parents[2]
SPEC_PIPELINE = (
    "ximagesrc show-pointer=true ! videoconvert ! nvh264enc preset=low-latency-hq rc-mode=cbr "
    "bitrate=8000 gop-size=30 bframes=0 aud=false ! rtph264pay config-interval=1 pt=96 ! "
    "webrtcbin name=sendrecv bundle-policy=max-bundle"
)


def gst_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_system_python_gi(), "-m", "agent.gst_tools", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("smi", ["missing", "no-devices", "driver-mismatch"])
def test_no_gpu_is_gpu_init_error(fake_gpu: Callable[..., None], smi: str) -> None:
    fake_gpu(smi=smi)
    result = checks.check_gpu(1)
    assert (result.ok, result.code) == (False, "GPU_INIT_ERROR")
    choice = checks.choose_encoder(result, gpus_requested=1, fallback_allowed=True)
    assert choice.encoder is None  # a broken GPU is a failure, not a reason to fall back


def test_gpu_present(fake_gpu: Callable[..., None]) -> None:
    fake_gpu(smi="ok")
    result = checks.check_gpu(1)
    assert result.ok is True
    assert "NVIDIA L4" in result.detail


def test_cpu_session_skips_the_gpu_and_uses_x264_directly(fake_gpu: Callable[..., None]) -> None:
    fake_gpu(smi="missing")
    gpu = checks.check_gpu(0)
    assert gpu.ok is None
    choice = checks.choose_encoder(gpu, gpus_requested=0, fallback_allowed=False)
    assert (choice.encoder, choice.fallback, choice.check.ok) == ("x264enc", False, True)


def test_nvenc_works(fake_gpu: Callable[..., None]) -> None:
    fake_gpu(smi="ok", nvenc="legacy")
    choice = checks.choose_encoder(checks.check_gpu(1), gpus_requested=1, fallback_allowed=True)
    assert (choice.encoder, choice.fallback) == ("nvh264enc", False)
    assert choice.nvenc_properties is not None
    assert "low-latency-hq" in choice.nvenc_properties["preset"]


@pytest.mark.parametrize(
    ("nvenc", "inits"), [(None, True), ("legacy", False)], ids=["no-plugin", "no-nvenc-on-gpu"]
)
def test_gpu_without_usable_nvenc_falls_back_to_x264(
    fake_gpu: Callable[..., None], nvenc: str | None, inits: bool
) -> None:
    fake_gpu(smi="ok", nvenc=nvenc, nvenc_inits=inits)
    choice = checks.choose_encoder(checks.check_gpu(1), gpus_requested=1, fallback_allowed=True)
    assert (choice.encoder, choice.fallback) == ("x264enc", True)
    assert (choice.check.ok, choice.check.code) == (True, "SoftwareFallback")


def test_fallback_forbidden_is_encoder_unavailable(fake_gpu: Callable[..., None]) -> None:
    fake_gpu(smi="ok", nvenc="legacy", nvenc_inits=False)
    choice = checks.choose_encoder(checks.check_gpu(1), gpus_requested=1, fallback_allowed=False)
    assert choice.encoder is None
    assert (choice.check.ok, choice.check.code) == (False, "ENCODER_UNAVAILABLE")
    assert "failed to initialise" in choice.check.detail


def test_the_nvenc_pipeline_is_the_spec_reference_exactly() -> None:
    assert pipeline.build("nvh264enc", StreamSettings()).render() == SPEC_PIPELINE


def test_spec_settings_are_mapped_onto_the_legacy_and_the_cuda_encoder(
    fake_gpu: Callable[..., None],
) -> None:
    fake_gpu(nvenc="legacy")
    legacy = checks.element_properties("nvh264enc")
    built = pipeline.build(
        "nvh264enc", StreamSettings(bitrate_kbps=6000, gop_size=60), nvenc_available=legacy
    )
    assert dict(built.applied) == {
        "preset": "low-latency-hq",
        "rc-mode": "cbr",
        "bitrate": "6000",
        "gop-size": "60",
        "bframes": "0",
        "aud": "false",
    }
    fake_gpu(nvenc="cuda")
    cuda = checks.element_properties("nvh264enc")
    built = pipeline.build("nvh264enc", StreamSettings(), nvenc_available=cuda)
    assert dict(built.applied) == {
        "preset": "p1",
        "rc-mode": "cbr",
        "bitrate": "8000",
        "gop-size": "30",
        "b-frames": "0",
        "tune": "ultra-low-latency",
    }
    assert built.dropped == ("aud=false",)


def test_x264_fallback_settings() -> None:
    built = pipeline.build("x264enc", StreamSettings(bitrate_kbps=4000, gop_size=45))
    assert (
        "x264enc speed-preset=ultrafast tune=zerolatency bitrate=4000 key-int-max=45 bframes=0"
        in built.render()
    )


def test_real_gstreamer_parses_the_x264_pipeline_with_webrtcbin() -> None:
    tool("gst-inspect-1.0")
    for settings in (
        StreamSettings(),
        StreamSettings(framerate=30),
        StreamSettings(width=1280, height=720),
    ):
        text = pipeline.build("x264enc", settings).render()
        result = gst_tool("parse", text)
        assert result.returncode == 0, (text, result.stderr)
    broken = gst_tool("parse", "videotestsrc ! x264enc speed-preset=warp-speed ! fakesink")
    assert broken.returncode != 0


def test_the_x264_pipeline_really_encodes_frames() -> None:
    tool("gst-inspect-1.0")
    source = pipeline.Element("videotestsrc", (("num-buffers", "90"),))
    sink = pipeline.Element("fakesink", name="out")
    text = pipeline.build(
        "x264enc", StreamSettings(framerate=30, width=640, height=360), source=source, sink=sink
    ).render()
    result = gst_tool("run", text, "30")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["errors"] == []
    assert report["buffers"] >= 90  # RTP packets: at least one per encoded frame


def test_the_x264_pipeline_encodes_the_screen_under_xvfb() -> None:
    with xvfb() as display:
        source = pipeline.Element(
            "ximagesrc",
            (("display-name", display), ("show-pointer", "true"), ("num-buffers", "30")),
        )
        sink = pipeline.Element("fakesink", name="out")
        text = pipeline.build(
            "x264enc", StreamSettings(framerate=30), source=source, sink=sink
        ).render()
        result = gst_tool("run", text, "30")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["buffers"] >= 30
        # The screen is BGRx; left to itself x264enc picks 4:4:4 and High 4:4:4 Predictive
        # (profile_idc 244), which browsers cannot decode. The SPS must say Constrained
        # Baseline: profile_idc 66 with constraint_set1 (0x40) set.
        sprop = re.search(r'sprop-parameter-sets=\(string\)"([^"]+)"', report["caps"])
        assert sprop is not None, report["caps"]
        sps = base64.b64decode(sprop[1].replace("\\", "").split(",")[0])
        assert sps[0] & 0x1F == 7, "first parameter set is an SPS"
        assert (sps[1], sps[2] & 0x40) == (66, 0x40), sps[:4].hex()
