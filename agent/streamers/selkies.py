"""Selkies 2.x (`selkies` on PyPI), the maintained line: pixelflux captures and encodes (NVENC or
VA-API where the GPU has the codec, else x264), WebRTC only with `SELKIES_MODE=webrtc`, loopback
only unless `SELKIES_PUBLIC=true`, `/api/health` without auth, `/api/metrics` on the main port
behind basic auth, `selkies-resize`, exit 78 (EX_CONFIG) on a configuration error.

The spec's intent mapped: `SELKIES_ENCODER=h264enc` (2.x rejects `nvh264enc`) with the GPU
allowed only when nvidia-smi and pixelflux's own NVENC probe pass, else `SELKIES_USE_CPU=true`;
CBR at the template's bitrate; the GOP as a key-frame interval in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import structlog

from agent import checks, metrics
from agent.metrics import StreamStats
from agent.streamers import (
    DISPLAY_SIZE,
    Permissions,
    StreamConfig,
    Streamer,
    _beside,
    _version,
)

log = structlog.get_logger("vdi.agent.selkies")

DISTRIBUTION = "selkies"
ENCODER = "h264enc"
HARDWARE = f"{ENCODER}/nvenc"
SOFTWARE = f"{ENCODER}/x264"
# pixelflux's probe of the GPU's hardware encoders, as Selkies itself runs it at start-up
# (settings.hardware_encoders; -2 is AUTO_ENCODE_NODE): {"h264": "nvenc", ...} or {}.
NVENC_PROBE = "import json, pixelflux; print(json.dumps(dict(pixelflux.hardware_encoders(-2, ''))))"
PROBE_TIMEOUT_S = 60
# The spec's nvh264enc settings that 2.x exposes no setting for: pixelflux configures its
# encoders itself.
SPEC_SETTINGS_NOT_SETTABLE = ("preset=low-latency-hq", "bframes=0", "aud=false")


CLIPBOARD = {"both": "true", "in": "in", "out": "out", "off": "false"}
FILE_TRANSFERS = {"both": "upload,download", "upload": "upload", "download": "download", "off": ""}


def locked(value: bool) -> str:
    """A boolean setting the page cannot change (settings.py: the `|locked` suffix)."""
    return f"{'true' if value else 'false'}|locked"


def policy_settings(permissions: Permissions) -> dict[str, str]:
    """The template's policy as Selkies 2.x settings, each locked: the page's menus cannot turn
    back on what the template turned off. A desktop is shared through the control plane only:
    with `sharing` on, Selkies' sharing lets the pages of several tokens stay side by side
    (secure mode: the token table says who is a viewer), with no `#shared` links and no
    viewer promoted to input (`enable_collab`: a collaborator's token is a controller's). A
    string or list setting is enforced by the server whatever the page asks (a list with one
    value, or none, is locked by definition)."""
    transfers = FILE_TRANSFERS[permissions.file_transfer]
    return {
        "SELKIES_ENABLE_CLIPBOARD": CLIPBOARD[permissions.clipboard],
        "SELKIES_ENABLE_BINARY_CLIPBOARD": locked(permissions.clipboard != "off"),
        # "" would mean "the built-in default" (both): "none" disables them
        "SELKIES_FILE_TRANSFERS": transfers or "none",
        "SELKIES_FILE_TRANSFER_LIMIT_MBPS": f"{permissions.file_transfer_limit_mbps:g}",
        "SELKIES_AUDIO_ENABLED": locked(permissions.audio),
        "SELKIES_MICROPHONE_ENABLED": locked(permissions.audio and permissions.microphone),
        "SELKIES_PRINTING_ENABLED": locked(permissions.printing),
        "SELKIES_GAMEPAD_ENABLED": locked(permissions.gamepads),
        "SELKIES_WEBCAM_ENABLED": locked(False),
        "SELKIES_COMMAND_ENABLED": locked(False),
        "SELKIES_ENABLE_SHARING": locked(permissions.sharing != "off"),
        "SELKIES_ENABLE_SHARED": locked(False),
        "SELKIES_ENABLE_COLLAB": locked(False),
        "SELKIES_ENABLE_PLAYER2": locked(False),
        "SELKIES_ENABLE_PLAYER3": locked(False),
        "SELKIES_ENABLE_PLAYER4": locked(False),
    }


def desktop_audit_token(agent_token: str) -> str:
    """The bearer token of Selkies' audit webhook, derived from the agent token as the control
    plane derives it (app.security.desktop_audit_token): it authorizes that webhook alone."""
    purpose = b"vdi-control desktop audit v1"
    return hmac.new(agent_token.encode(), purpose, hashlib.sha256).hexdigest()


def audit_settings(base: Mapping[str, str]) -> dict[str, str]:
    """Selkies' audit webhook to the control plane (connects, clipboard and file transfers,
    recordings; metadata only), where the pod has its callback."""
    callback, session, token = (
        base.get(name, "") for name in ("VDI_CALLBACK_URL", "VDI_SESSION_ID", "VDI_AGENT_TOKEN")
    )
    if not (callback and session and token):
        return {}
    return {
        "SELKIES_AUDIT_WEBHOOK_URL": f"{callback.rstrip('/')}/v1/sessions/{session}/desktop-audit",
        "SELKIES_AUDIT_WEBHOOK_TOKEN": desktop_audit_token(token),
        "SELKIES_AUDIT_WEBHOOK_TIMEOUT": "5",
    }


# Selkies started with a live control socket (see selkies_live.py), run by Selkies' own Python
LIVE_LAUNCHER = Path(__file__).with_name("selkies_live.py")
LIVE_TIMEOUT_S = 10


class Selkies(Streamer):
    line = "selkies"
    # argparse usage; EX_SOFTWARE (the live launcher found no setters); EX_CONFIG (no password)
    config_error_codes = frozenset({2, 70, 78})

    def __init__(self, command: list[str], version: str) -> None:
        super().__init__(command, version)
        self.python = _beside(command[0], "python3")
        self.live_socket: str | None = None

    def launch(self, config: StreamConfig, env: dict[str, str]) -> list[str]:
        """Over WebRTC, Selkies through the live launcher, run by the Python of its own venv
        (the one beside the `selkies` command), so that frame rate and bitrate change on the
        running stream; else (no such Python, WebSockets) `selkies` itself."""
        own_python = Path(self.command[0]).parent / "python3"
        if config.transport != "webrtc" or not own_python.is_file():
            return self.command
        if self.live_socket is None:
            directory = tempfile.mkdtemp(prefix="vdi-live-")  # 0700, the agent's
            self.live_socket = str(Path(directory) / "live.sock")
        env["VDI_LIVE_SOCKET"] = self.live_socket
        # -I: not the launcher's own directory on its path (this module is named selkies too),
        # nor any PYTHON* setting of the pod's
        return [str(own_python), "-I", str(LIVE_LAUNCHER), *self.command[1:]]

    async def apply_live(self, settings: Mapping[str, int | None]) -> dict[str, Any] | None:
        if self.live_socket is None:
            return None
        request = {
            {"bitrate_kbps": "video_bitrate"}.get(name, name): value
            for name, value in settings.items()
        }
        answer = await self._ask_live(request)
        if answer is None or "applied" not in answer:
            log.warning("live settings refused", answer=answer)
            return None
        applied: dict[str, Any] = answer["applied"]
        return applied

    async def _ask_live(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """One request to the live launcher's socket; None when it cannot be asked."""
        if self.live_socket is None:
            return None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.live_socket), LIVE_TIMEOUT_S
            )
            try:
                writer.write(json.dumps(request).encode() + b"\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), LIVE_TIMEOUT_S)
            finally:
                writer.close()
            answer = json.loads(line)
        except (OSError, TimeoutError, json.JSONDecodeError) as error:
            log.warning("live launcher not reached", error=str(error))
            return None
        return answer if isinstance(answer, dict) else None

    async def viewers(
        self, http: httpx.AsyncClient, config: StreamConfig
    ) -> list[dict[str, Any]] | None:
        """Selkies' `/api/sessions` (the pages on the active transport), with the digest of
        each page's token and its address from the live launcher where it runs (WebRTC)."""
        try:
            response = await http.get(
                f"{config.local_url}/api/sessions", headers=config.streamer_auth()
            )
            pages = response.json()["sessions"] if response.is_success else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        if not isinstance(pages, list):
            return None
        peers = (await self._ask_live({"peers": True}) or {}).get("peers") or {}
        found = []
        for page in pages:
            if not isinstance(page, dict) or not isinstance(page.get("id"), str):
                continue
            peer = peers.get(page["id"]) if isinstance(peers, dict) else None
            peer = peer if isinstance(peer, dict) else {}
            found.append(
                {
                    "id": page["id"],
                    "role": "controller" if page.get("role") == "controller" else "viewer",
                    "since": page.get("connected_at"),
                    "token": peer.get("token"),
                    "address": peer.get("address"),
                }
            )
        return found

    @classmethod
    def find(cls, configured: list[str]) -> Selkies | None:
        if configured and Path(configured[0]).name == "selkies":
            program: str | None = configured[0]
        else:
            program = shutil.which("selkies")
        if program is None:
            return None
        command = configured if configured and program == configured[0] else [program]
        return cls(command, _version(_beside(program, "python3"), DISTRIBUTION))

    def probe_nvenc(self) -> checks.Check:
        """Check 2 for 2.x: does pixelflux find an NVENC H.264 encoder on this GPU."""
        if self.python is None:
            return checks.Check(
                "encoder", False, checks.ENCODER_UNAVAILABLE, "no Python beside selkies to probe"
            )
        try:
            result = subprocess.run(
                [self.python, "-c", NVENC_PROBE],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return checks.Check(
                "encoder", False, checks.ENCODER_UNAVAILABLE, "the NVENC probe did not answer"
            )
        try:
            served = json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout else {}
        except (json.JSONDecodeError, IndexError):
            served = {}
        if result.returncode != 0 or not isinstance(served, dict):
            reason = (result.stderr or "").strip().splitlines()[-1:] or [
                f"exit {result.returncode}"
            ]
            return checks.Check(
                "encoder", False, checks.ENCODER_UNAVAILABLE, f"NVENC probe failed: {reason[0]}"
            )
        if served.get("h264") == "nvenc":
            return checks.Check("encoder", True, None, "pixelflux found NVENC H.264 on this GPU")
        hardware = ", ".join(f"{k}: {v}" for k, v in sorted(served.items())) or "none"
        return checks.Check(
            "encoder",
            False,
            checks.ENCODER_UNAVAILABLE,
            f"pixelflux found no NVENC H.264 encoder on this GPU (hardware encoders: {hardware})",
        )

    def choose_encoder(
        self, gpu: checks.Check, *, gpus_requested: int, fallback_allowed: bool
    ) -> checks.EncoderChoice:
        if gpus_requested == 0:
            return checks.EncoderChoice(
                SOFTWARE,
                False,
                checks.Check("encoder", True, None, f"CPU session: {SOFTWARE}"),
            )
        if gpu.ok is not True:
            return checks.EncoderChoice(
                None, False, checks.Check("encoder", False, checks.ENCODER_UNAVAILABLE, "no GPU")
            )
        nvenc = self.probe_nvenc()
        if nvenc.ok:
            return checks.EncoderChoice(HARDWARE, False, nvenc)
        if not fallback_allowed:
            return checks.EncoderChoice(None, False, nvenc)
        log.warning("NVENC unusable, forcing software encoding", detail=nvenc.detail)
        return checks.EncoderChoice(
            SOFTWARE,
            True,
            checks.Check(
                "encoder",
                True,
                "SoftwareFallback",
                f"{nvenc.detail}; using {SOFTWARE} (SELKIES_USE_CPU=true)",
            ),
        )

    def environment(self, config: StreamConfig, base: Mapping[str, str]) -> dict[str, str]:
        config.require_safe()
        env = dict(base)
        # 2.x refuses --addr together with SELKIES_PUBLIC; the 1.x names mean nothing here.
        for name in ("SELKIES_ADDR", "SELKIES_PUBLIC", "SELKIES_METRICS_HTTP_PORT"):
            env.pop(name, None)
        keyframe_interval_s = config.gop_size / max(1, config.framerate)
        env.update(
            {
                "SELKIES_ENCODER": ENCODER,
                "SELKIES_USE_CPU": "false" if config.encoder == HARDWARE else "true",
                "SELKIES_FRAMERATE": str(config.framerate),
                "SELKIES_VIDEO_BITRATE": str(config.bitrate_kbps),
                "SELKIES_RATE_CONTROL_MODE": "cbr",
                "SELKIES_KEYFRAME_INTERVAL": f"{keyframe_interval_s:g}",
                "SELKIES_ENABLE_RESIZE": "true",
                "SELKIES_ENABLE_BASIC_AUTH": "true",
                "SELKIES_BASIC_AUTH_USER": config.user,
                "SELKIES_BASIC_AUTH_PASSWORD": config.password,
                "SELKIES_PORT": str(config.port),
                "SELKIES_MODE": config.transport,
                # The page may not switch transports: WebRTC is the TURN-always path.
                "SELKIES_ENABLE_DUAL_MODE": "false",
                "SELKIES_ENABLE_METRICS_HTTP": "true",
                "SELKIES_ENABLE_WEBRTC_STATISTICS": "true",
            }
        )
        # The pod's Selkies listens on every interface (the Service reaches it); a local
        # desktop's only on the address the operator chose (loopback by default).
        if config.listen_addr:
            env["SELKIES_ADDR"] = config.listen_addr
        else:
            env["SELKIES_PUBLIC"] = "true"
        if config.transport == "webrtc" and config.turn:
            env.update(config.turn_settings(config.stun_host or config.turn_host))
        env.update(policy_settings(config.permissions))
        env.update(audit_settings(base))
        if config.secure:
            # Secure mode: every page presents a token of the table the agent keeps (the user's
            # own is the session's password); Basic auth off, or a shared page could not load
            env["SELKIES_ENABLE_BASIC_AUTH"] = "false"
            env["SELKIES_MASTER_TOKEN"] = config.master_token
        else:
            env.pop("SELKIES_MASTER_TOKEN", None)
        return env

    def not_applied(self, config: StreamConfig) -> list[str]:
        return [
            f"{', '.join(SPEC_SETTINGS_NOT_SETTABLE)} (Selkies 2.x has no such settings; "
            f"pixelflux configures its encoders itself); gop-size={config.gop_size} applied as "
            f"a key frame every {config.gop_size / max(1, config.framerate):g} s"
        ]

    async def healthy(self, http: httpx.AsyncClient, config: StreamConfig) -> bool:
        try:
            response = await http.get(f"{config.local_url}/api/health")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def stats(self, http: httpx.AsyncClient, config: StreamConfig) -> StreamStats | None:
        try:
            response = await http.get(
                f"{config.local_url}/api/metrics", headers=config.streamer_auth()
            )
        except httpx.HTTPError:
            return None
        return metrics.parse(response.text) if response.is_success else None

    def resize_command(self, size: str) -> list[str] | None:
        program = _beside(self.command[0], "selkies-resize")
        return [program, size] if program else None

    def size_command(self) -> list[str] | None:
        # the X client library Selkies 2.x carries inside its package
        return [self.python, "-I", "-c", DISPLAY_SIZE % "selkies.Xlib"] if self.python else None
