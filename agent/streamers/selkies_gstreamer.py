"""Selkies-GStreamer 1.x, the line the spec describes: `SELKIES_ENCODER` is a GStreamer element
(nvh264enc, else x264enc), its own metrics server on METRICS_PORT, `/health` behind basic auth
(so health is a TCP connect), `selkies-gstreamer-resize`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Mapping

import httpx

from agent import checks, metrics
from agent.metrics import StreamStats
from agent.streamers import (
    DISPLAY_SIZE,
    Permissions,
    StreamConfig,
    Streamer,
    UnsafeConfiguration,
    _beside,
    _version,
)

METRICS_PORT = 9081
DISTRIBUTION = "selkies-gstreamer"


CLIPBOARD = {"both": "true", "in": "in", "out": "out", "off": "false"}  # --enable_clipboard


def unenforceable_by_1x(permissions: Permissions, *, has_sound_server: bool) -> list[str]:
    """What 1.x cannot hold to: it streams whatever sound server it is given and takes every
    gamepad; it has no microphone, file transfer or printing at all (nothing to turn off)."""
    problems = []
    if not permissions.audio and has_sound_server:
        problems.append("audio: false (1.x streams the sound server it is given)")
    if not permissions.gamepads:
        problems.append("gamepads: false (1.x always takes gamepads)")
    if permissions.microphone:
        problems.append("microphone: true (1.x has no microphone)")
    if permissions.sharing != "off":
        problems.append(f"sharing: {permissions.sharing} (1.x has no secure mode, no shares)")
    return problems


class SelkiesGStreamer(Streamer):
    line = "selkies-gstreamer"
    config_error_codes = frozenset({2})  # argparse: an unknown or malformed option

    def __init__(
        self,
        command: list[str],
        version: str,
        *,
        metrics_url: str = f"http://127.0.0.1:{METRICS_PORT}/metrics",
        health_host: str = "127.0.0.1",
    ) -> None:
        super().__init__(command, version)
        self.metrics_url = metrics_url
        self.health_host = health_host

    @classmethod
    def find(cls, configured: list[str]) -> SelkiesGStreamer | None:
        program = shutil.which("selkies-gstreamer")
        if program is None:
            return None
        return cls(configured or [program], _version(_beside(program, "python3"), DISTRIBUTION))

    def choose_encoder(
        self, gpu: checks.Check, *, gpus_requested: int, fallback_allowed: bool
    ) -> checks.EncoderChoice:
        return checks.choose_encoder(
            gpu, gpus_requested=gpus_requested, fallback_allowed=fallback_allowed
        )

    def environment(self, config: StreamConfig, base: Mapping[str, str]) -> dict[str, str]:
        config.require_safe()
        env = dict(base)
        env.update(
            {
                "SELKIES_ENCODER": config.encoder,
                "SELKIES_FRAMERATE": str(config.framerate),
                "SELKIES_VIDEO_BITRATE": str(config.bitrate_kbps),
                "SELKIES_ENABLE_RESIZE": "true",
                "SELKIES_ENABLE_BASIC_AUTH": "true",
                "SELKIES_BASIC_AUTH_USER": config.user,
                "SELKIES_BASIC_AUTH_PASSWORD": config.password,
                "SELKIES_ADDR": config.listen_addr or "0.0.0.0",
                "SELKIES_PORT": str(config.port),
                "SELKIES_ENABLE_METRICS_HTTP": "true",
                "SELKIES_METRICS_HTTP_PORT": str(METRICS_PORT),
                "SELKIES_ENABLE_WEBRTC_STATISTICS": "true",
            }
        )
        if config.turn:
            env.update(config.turn_settings(config.stun_host))
        env.pop("SELKIES_MASTER_TOKEN", None)  # a 2.x setting: nothing of 1.x's reads it
        permissions = config.permissions
        unenforceable = unenforceable_by_1x(permissions, has_sound_server="PULSE_SERVER" in env)
        if unenforceable:
            raise UnsafeConfiguration(
                "Selkies-GStreamer 1.x cannot enforce the template's "
                + "; ".join(unenforceable)
                + ": pin streamer 'selkies' (2.x) in the template, or use an image with it"
            )
        env["SELKIES_ENABLE_CLIPBOARD"] = CLIPBOARD[permissions.clipboard]
        return env

    async def healthy(self, http: httpx.AsyncClient, config: StreamConfig) -> bool:
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self.health_host, config.port), timeout=2
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def stats(self, http: httpx.AsyncClient, config: StreamConfig) -> StreamStats | None:
        try:
            response = await http.get(self.metrics_url)
        except httpx.HTTPError:
            return None
        return metrics.parse(response.text) if response.is_success else None

    def resize_command(self, size: str) -> list[str] | None:
        program = shutil.which("selkies-gstreamer-resize")
        return [program, size] if program else None

    def size_command(self) -> list[str] | None:
        # python-xlib, which selkies-gstreamer depends on, in its own interpreter
        python = _beside(self.command[0], "python3")
        return [python, "-I", "-c", DISPLAY_SIZE % "Xlib"] if python else None
