"""Stand-ins for what this machine lacks (an NVIDIA GPU): PATH-injected nvidia-smi and a
gst-inspect/gst-launch that answer for nvh264enc and defer to the real GStreamer otherwise."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tools import find_tool

REAL_INSPECT = str(find_tool("gst-inspect-1.0") or "/usr/bin/gst-inspect-1.0")
REAL_LAUNCH = str(find_tool("gst-launch-1.0") or "/usr/bin/gst-launch-1.0")

LEGACY_NVENC = """Factory Details:
  Long-name                NVENC H.264 Video Encoder

Element Properties:
  aud                 : Use AU (Access Unit) delimiter
                        flags: readable, writable
                        Boolean. Default: true
  bframes             : Number of B-frames between I and P
                        Unsigned Integer. Range: 0 - 4 Default: 0
  bitrate             : Bitrate in kbit/sec (0 = from NVENC preset)
                        Unsigned Integer. Range: 0 - 2048000 Default: 0
  gop-size            : Number of frames between intra frames (-1 = infinite)
                        Integer. Range: -1 - 2147483647 Default: 75
  preset              : Encoding Preset
                        Enum "GstNvPreset" Default: 0, "default"
                           (0): default          - Default
                           (2): low-latency      - Low Latency
                           (3): low-latency-hq   - Low Latency, High Quality
  rc-mode             : Rate Control Mode
                        Enum "GstNvRCMode" Default: 0, "default"
                           (2): cbr              - Constant Bit Rate
"""

CUDA_NVENC = """Element Properties:
  b-frames            : Number of B-frames
                        Unsigned Integer. Range: 0 - 4 Default: 0
  bitrate             : Bitrate in kbit/sec
                        Unsigned Integer. Range: 0 - 2048000 Default: 0
  gop-size            : Number of frames between intra frames
                        Integer. Range: -1 - 2147483647 Default: 30
  preset              : Encoding Preset
                        Enum "GstNvEncoderPreset" Default: 0, "default"
                           (8): p1               - P1, fastest
                           (14): p7              - P7, slowest
  rc-mode             : Rate Control Mode
                        Enum "GstNvEncoderRCMode" Default: 1, "vbr"
                           (2): cbr              - Constant Bit Rate
  tune                : Encoding tune
                        Enum "GstNvEncoderTune" Default: 0, "default"
                           (3): ultra-low-latency - Ultra low latency
"""


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """fake_gpu(smi=..., nvenc=None|'legacy'|'cuda', nvenc_inits=True): put stand-ins on PATH."""

    def install(smi: str = "ok", nvenc: str | None = "legacy", nvenc_inits: bool = True) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        if smi == "ok":
            _script(bin_dir / "nvidia-smi", 'echo "NVIDIA L4, 550.54.15, 23034 MiB, 0"\n')
        elif smi == "no-devices":
            _script(bin_dir / "nvidia-smi", 'echo "No devices were found" >&2\nexit 6\n')
        elif smi == "driver-mismatch":
            _script(
                bin_dir / "nvidia-smi",
                'echo "Failed to initialize NVML: Driver/library version mismatch" >&2\nexit 18\n',
            )
        # smi == "missing": no nvidia-smi at all
        text = {"legacy": LEGACY_NVENC, "cuda": CUDA_NVENC}.get(nvenc or "")
        (tmp_path / "nvenc.txt").write_text(text or "")
        _script(
            bin_dir / "gst-inspect-1.0",
            f'if [ "$1" = "nvh264enc" ]; then\n'
            f'  [ -s "{tmp_path}/nvenc.txt" ] || '
            f'{{ echo "No such element or plugin nvh264enc" >&2; exit 1; }}\n'
            f'  cat "{tmp_path}/nvenc.txt"; exit 0\nfi\nexec {REAL_INSPECT} "$@"\n',
        )
        init = (
            "exit 0"
            if nvenc_inits
            else 'echo "ERROR: Could not initialise NVENC: no CUDA device" >&2; exit 1'
        )
        _script(
            bin_dir / "gst-launch-1.0",
            f'case "$*" in *nvh264enc*) {init} ;; esac\nexec {REAL_LAUNCH} "$@"\n',
        )
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin")

    return install
