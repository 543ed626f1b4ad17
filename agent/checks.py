"""The spec's checks 1 and 2: is the GPU there (nvidia-smi), and does NVENC really encode
(gst-inspect, then a one-frame encode, since the nvcodec plugin loads even where NVENC is
unusable: A100/H100 have no NVENC, drivers mismatch, session limits). Then the encoder choice."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field

import structlog

from agent.pipeline import HARDWARE, SOFTWARE

log = structlog.get_logger("vdi.agent.checks")

GPU_INIT_ERROR = "GPU_INIT_ERROR"
ENCODER_UNAVAILABLE = "ENCODER_UNAVAILABLE"
NVIDIA_SMI_QUERY = [
    "nvidia-smi",
    "--query-gpu=name,driver_version,memory.total,encoder.stats.sessionCount",
    "--format=csv,noheader",
]
ENCODER_INIT = "videotestsrc num-buffers=1 ! cudaupload ! nvh264enc ! fakesink"
COMMAND_TIMEOUT_S = 30


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None
    code: str | None = None
    detail: str = ""

    def report(self) -> dict[str, object]:
        return {"name": self.name, "ok": self.ok, "code": self.code, "detail": self.detail[:2000]}


@dataclass(frozen=True)
class EncoderChoice:
    encoder: str | None  # None: nothing usable (the session fails)
    fallback: bool
    check: Check
    nvenc_properties: dict[str, tuple[str, ...]] | None = field(default=None)


def _run(
    command: list[str], timeout_s: float = COMMAND_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)


def check_gpu(gpus_requested: int) -> Check:
    """Check 1. A CPU session (VDI_GPU=0) has nothing to check."""
    if gpus_requested == 0:
        return Check("gpu", None, None, "CPU session: no GPU requested")
    try:
        result = _run(NVIDIA_SMI_QUERY)
    except FileNotFoundError:
        detail = "nvidia-smi not found: no NVIDIA driver in this container"
    except subprocess.TimeoutExpired:
        detail = "nvidia-smi did not answer"
    else:
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        if result.returncode == 0 and lines:
            return Check("gpu", True, None, "; ".join(lines))
        detail = (
            result.stderr or result.stdout or f"exit {result.returncode}"
        ).strip() or "no devices"
    log.error("GPU_INIT_ERROR", detail=detail)  # spec: log it, then report the check failed
    return Check("gpu", False, GPU_INIT_ERROR, detail)


_PROPERTY = re.compile(r"^  ([a-z][a-z0-9-]*)\s+:")
_ENUM_VALUE = re.compile(r"^\s+\((?:-?\d+|0x[0-9a-f]+)\):\s+(\S+)")


def element_properties(factory: str) -> dict[str, tuple[str, ...]] | None:
    """gst-inspect's view of an element: property -> enum or flag values (empty for others).
    None when the element does not exist."""
    try:
        result = _run(["gst-inspect-1.0", factory])
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    properties: dict[str, list[str]] = {}
    current: str | None = None
    for line in result.stdout.splitlines():
        if match := _PROPERTY.match(line):
            current = match[1]
            properties[current] = []
        elif current and (match := _ENUM_VALUE.match(line)):
            properties[current].append(match[1])
    return {name: tuple(values) for name, values in properties.items()}


def probe_nvenc() -> tuple[Check, dict[str, tuple[str, ...]] | None]:
    """Check 2: the element exists (gst-inspect exit 0) and initialises on this GPU."""
    properties = element_properties(HARDWARE)
    if properties is None:
        return Check(
            "encoder",
            False,
            ENCODER_UNAVAILABLE,
            f"gst-inspect-1.0 {HARDWARE} failed: no NVENC plugin",
        ), None
    try:
        result = _run(["gst-launch-1.0", "-q", *ENCODER_INIT.split()])
    except subprocess.TimeoutExpired:
        return Check(
            "encoder", False, ENCODER_UNAVAILABLE, f"{HARDWARE} did not initialise in time"
        ), properties
    if result.returncode != 0:
        reason = (result.stderr or result.stdout).strip().splitlines()[-1:] or [
            f"exit {result.returncode}"
        ]
        return Check(
            "encoder", False, ENCODER_UNAVAILABLE, f"{HARDWARE} failed to initialise: {reason[0]}"
        ), properties
    return Check("encoder", True, None, f"{HARDWARE} encoded a test frame"), properties


def choose_encoder(gpu: Check, *, gpus_requested: int, fallback_allowed: bool) -> EncoderChoice:
    """Hardware first; x264enc only where the spec allows it."""
    if gpus_requested == 0:
        return EncoderChoice(SOFTWARE, False, Check("encoder", True, None, "CPU session: x264enc"))
    if gpu.ok is not True:
        # The GPU itself is broken: the session fails on GPU_INIT_ERROR (DESIGN), no fallback.
        return EncoderChoice(None, False, Check("encoder", False, ENCODER_UNAVAILABLE, "no GPU"))
    nvenc, properties = probe_nvenc()
    if nvenc.ok:
        return EncoderChoice(HARDWARE, False, nvenc, properties)
    if not fallback_allowed:
        return EncoderChoice(None, False, nvenc, properties)
    fallback = Check("encoder", True, "SoftwareFallback", f"{nvenc.detail}; using {SOFTWARE}")
    log.warning("NVENC unusable, falling back to x264enc", detail=nvenc.detail)
    return EncoderChoice(SOFTWARE, True, fallback, properties)
