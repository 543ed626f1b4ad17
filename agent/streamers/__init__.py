"""The one interface the agent has to a Selkies line: how to start it, with which environment,
how to tell it is healthy, where its stream figures are, how to resize, which exit codes mean
"configured wrong". The checks, the policy and the reporter never ask which line runs.

Lines: `selkies-gstreamer` (1.x, the spec's: GStreamer webrtcbin, encoder element names) and
`selkies` (2.x, the maintained one: pixelflux encoders). `detect` finds the one the image holds
or takes the template's pin (`VDI_STREAMER`).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from agent import checks
from agent.metrics import StreamStats

STREAMER_FAILED = "STREAMER_FAILED"
LINES = ("selkies-gstreamer", "selkies")
DEFAULT_PASSWORD = "mypasswd"  # Selkies-GStreamer's own default: never acceptable
PORT = 8080
CLIPBOARD_VALUES = ("both", "in", "out", "off")
FILE_TRANSFER_VALUES = ("both", "upload", "download", "off")
SHARING_VALUES = ("off", "view", "collab")
# The display's size, printed as WxH by the streamer's own Python with the Xlib module it has
# (`%s`), on the DISPLAY of the environment it runs in
DISPLAY_SIZE = (
    "from %s import display; s = display.Display().screen(); "
    "print(f'{s.width_in_pixels}x{s.height_in_pixels}')"
)


class UnsafeConfiguration(Exception):
    """The streamer would start with an unsafe default (a public TURN relay, a known password)."""


class UnknownStreamer(Exception):
    """VDI_STREAMER names no line, or the line it names is not in this image."""


@dataclass(frozen=True)
class Permissions:
    """The template's desktop policy (the control plane's `VDI_CLIPBOARD`, `VDI_FILE_TRANSFER`,
    ...): what the user may do. Each line enforces it with its own settings, or refuses to start
    when it cannot."""

    clipboard: str = "both"  # both, in, out, off
    file_transfer: str = "both"  # both, upload, download, off
    file_transfer_limit_mbps: float = 0.0
    audio: bool = True
    microphone: bool = False
    printing: bool = True
    gamepads: bool = True
    sharing: str = "off"  # off, view, collab: shares through the control plane (2.x's secure mode)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Permissions:
        def flag(name: str, default: bool) -> bool:
            value = env.get(name, "")
            return default if value == "" else value.lower() == "true"

        clipboard = env.get("VDI_CLIPBOARD") or "both"
        transfer = env.get("VDI_FILE_TRANSFER") or "both"
        if clipboard not in CLIPBOARD_VALUES:
            raise UnsafeConfiguration(
                f"VDI_CLIPBOARD={clipboard!r}: expected one of {', '.join(CLIPBOARD_VALUES)}"
            )
        if transfer not in FILE_TRANSFER_VALUES:
            raise UnsafeConfiguration(
                f"VDI_FILE_TRANSFER={transfer!r}: expected one of {', '.join(FILE_TRANSFER_VALUES)}"
            )
        sharing = env.get("VDI_SHARING") or "off"
        if sharing not in SHARING_VALUES:
            raise UnsafeConfiguration(
                f"VDI_SHARING={sharing!r}: expected one of {', '.join(SHARING_VALUES)}"
            )
        try:
            limit = float(env.get("VDI_FILE_TRANSFER_LIMIT_MBPS") or 0)
        except ValueError as error:
            raise UnsafeConfiguration(f"VDI_FILE_TRANSFER_LIMIT_MBPS: {error}") from error
        return cls(
            clipboard=clipboard,
            file_transfer=transfer,
            file_transfer_limit_mbps=max(0.0, limit),
            audio=flag("VDI_AUDIO", True),
            microphone=flag("VDI_MICROPHONE", False),
            printing=flag("VDI_PRINTING", True),
            gamepads=flag("VDI_GAMEPADS", True),
            sharing=sharing,
        )


@dataclass(frozen=True)
class StreamConfig:
    """What the agent decided, in the spec's terms; each line maps it onto its own settings."""

    encoder: str  # as reported: "nvh264enc", "x264enc", "h264enc/nvenc", "h264enc/x264"
    fallback: bool  # software encoding although a GPU was asked for, or a CPU session
    framerate: int
    bitrate_kbps: int
    gop_size: int
    password: str
    user: str
    turn_host: str
    turn_port: str
    turn_username: str
    turn_password: str
    stun_host: str
    stun_port: str
    transport: str = "webrtc"  # or "websockets" (2.x only: no TURN then)
    # A local desktop (VDI_CLUSTER=local) without a TURN host: WebRTC between this machine's
    # own addresses, which needs no relay (VDI_TURN=none). A session pod always has TURN.
    turn: bool = True
    port: int = PORT
    listen_addr: str = ""  # empty: every interface (the pod's); else only this address
    permissions: Permissions = Permissions()
    # Selkies 2.x's secure mode (a template that shares): every page presents a token, the
    # agent holds this one, which sets the token table and reads the metrics
    master_token: str = ""

    @property
    def secure(self) -> bool:
        """Secure mode: the template shares, and the session's master token came with it."""
        return self.permissions.sharing != "off"

    @property
    def local_url(self) -> str:
        """Where the agent itself reaches the streamer."""
        host = self.listen_addr if self.listen_addr not in ("", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, encoder: str, fallback: bool, framerate: int, bitrate: int
    ) -> StreamConfig:
        return cls(
            encoder=encoder,
            fallback=fallback,
            framerate=framerate,
            bitrate_kbps=bitrate,
            gop_size=int(env.get("VDI_GOP_SIZE", "30")),
            password=env.get("SELKIES_BASIC_AUTH_PASSWORD", ""),
            user=env.get("SELKIES_BASIC_AUTH_USER", "user"),
            turn_host=env.get("SELKIES_TURN_HOST", ""),
            turn_port=env.get("SELKIES_TURN_PORT", "3478"),
            turn_username=env.get("SELKIES_TURN_USERNAME", ""),
            turn_password=env.get("SELKIES_TURN_PASSWORD", ""),
            stun_host=env.get("SELKIES_STUN_HOST", ""),
            stun_port=env.get("SELKIES_STUN_PORT", "3478"),
            transport=env.get("VDI_TRANSPORT", "webrtc"),
            turn=env.get("VDI_TURN", "") != "none",
            port=int(env.get("SELKIES_PORT") or PORT),
            listen_addr=env.get("VDI_LISTEN_ADDR", ""),
            permissions=Permissions.from_env(env),
            master_token=env.get("SELKIES_MASTER_TOKEN", ""),
        )

    def turn_settings(self, stun_host: str) -> dict[str, str]:
        """The relay's settings, named alike in both lines (each decides its STUN host)."""
        return {
            "SELKIES_TURN_HOST": self.turn_host,
            "SELKIES_TURN_PORT": self.turn_port,
            "SELKIES_TURN_PROTOCOL": "udp",
            "SELKIES_TURN_USERNAME": self.turn_username,
            "SELKIES_TURN_PASSWORD": self.turn_password,
            "SELKIES_STUN_HOST": stun_host,
            "SELKIES_STUN_PORT": self.stun_port,
        }

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never reach a log line, a report or an error."""
        return tuple(
            s
            for s in (self.password, self.turn_password, self.turn_username, self.master_token)
            if s
        )

    def require_safe(self) -> None:
        if not self.password or self.password == DEFAULT_PASSWORD:
            raise UnsafeConfiguration("SELKIES_BASIC_AUTH_PASSWORD must be the session's password")
        if (
            self.transport == "webrtc"
            and self.turn
            and not (self.turn_host and self.turn_username and self.turn_password)
        ):
            raise UnsafeConfiguration(
                "SELKIES_TURN_HOST and the session's TURN credentials must be set: "
                "without them Selkies falls back to a public relay"
            )
        if self.secure and len(self.master_token) < 32:
            raise UnsafeConfiguration(
                f"sharing: {self.permissions.sharing} needs SELKIES_MASTER_TOKEN (the session "
                "Secret's key; at least 32 characters): without it no token table can be set"
            )

    def streamer_auth(self) -> dict[str, str]:
        """How the agent itself authenticates to the streamer's API: the master token in
        secure mode (Basic auth is off there), else the session's basic-auth credentials."""
        if self.secure:
            return {"Authorization": f"Bearer {self.master_token}"}
        token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


class Streamer(ABC):
    """One Selkies line as installed in this image."""

    line: str
    # Exit codes that mean the settings are wrong: restarting cannot help.
    config_error_codes: frozenset[int] = frozenset()

    def __init__(self, command: list[str], version: str) -> None:
        self.command = command
        self.version = version

    @property
    def label(self) -> str:
        """Line and version, as the report and the session carry it (e.g. `selkies 2.1.0`)."""
        return f"{self.line} {self.version}"

    @abstractmethod
    def choose_encoder(
        self, gpu: checks.Check, *, gpus_requested: int, fallback_allowed: bool
    ) -> checks.EncoderChoice:
        """Check 2 for this line, then hardware first and software where allowed."""

    @abstractmethod
    def environment(self, config: StreamConfig, base: Mapping[str, str]) -> dict[str, str]:
        """The streamer's environment: `base` (the pod's) with the decided settings."""

    def not_applied(self, config: StreamConfig) -> list[str]:
        """The spec's settings this line has no way to honour, said in the report."""
        return []

    def launch(self, config: StreamConfig, env: dict[str, str]) -> list[str]:
        """The command that starts it (`env` may gain what that command needs)."""
        return self.command

    async def apply_live(self, settings: Mapping[str, int | None]) -> dict[str, Any] | None:
        """Apply `framerate` / `video_bitrate` ceilings to the running stream, keeping its
        viewers; None where this line (or this start) cannot, and it must be restarted."""
        return None

    @abstractmethod
    async def healthy(self, http: httpx.AsyncClient, config: StreamConfig) -> bool:
        """Whether it answers as a working server."""

    @abstractmethod
    async def stats(self, http: httpx.AsyncClient, config: StreamConfig) -> StreamStats | None:
        """The viewer's figures where this line serves them; None when unreachable."""

    async def viewers(
        self, http: httpx.AsyncClient, config: StreamConfig
    ) -> list[dict[str, Any]] | None:
        """The pages connected now (`id`, `role` controller|viewer, `since`, and where the
        line can tell: `token` the digest of the token it opened with, `address`); None where
        this line cannot say."""
        return None

    @abstractmethod
    def resize_command(self, size: str) -> list[str] | None:
        """How to resize the display to `size` (WxH); None where this image cannot."""

    def size_command(self) -> list[str] | None:
        """A command that prints the display's size (WxH); None where this image has none."""
        return None


def _beside(command: str, name: str) -> str | None:
    """A program installed beside `command` (the same venv's bin), else on PATH."""
    sibling = Path(command).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which(name)


def _version(python: str | None, distribution: str) -> str:
    """The installed version of `distribution`, as the streamer's own interpreter sees it."""
    if python is None:
        return "unknown"
    try:
        result = subprocess.run(
            [
                python,
                "-c",
                f"import importlib.metadata as m; print(m.version({distribution!r}))",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else "unknown"


def detect(env: Mapping[str, str]) -> Streamer:
    """The line to run: `VDI_STREAMER` (`auto`, `selkies-gstreamer`, `selkies`) against what this
    image holds. `auto` takes the one installed; with both, the spec's (Selkies-GStreamer).
    `VDI_SELKIES_COMMAND` names the start command where it is not the line's own (1.x's image
    wraps it to load its GStreamer build)."""
    from agent.streamers.selkies import Selkies
    from agent.streamers.selkies_gstreamer import SelkiesGStreamer

    wanted = env.get("VDI_STREAMER", "auto") or "auto"
    if wanted not in ("auto", *LINES):
        raise UnknownStreamer(
            f"VDI_STREAMER={wanted!r}: expected auto, selkies-gstreamer or selkies"
        )
    configured = env.get("VDI_SELKIES_COMMAND", "").split()
    for line in LINES if wanted == "auto" else (wanted,):  # LINES: the spec's line first
        kind = SelkiesGStreamer if line == "selkies-gstreamer" else Selkies
        streamer = kind.find(configured)
        if streamer is not None:
            return streamer
    raise UnknownStreamer(
        f"no {'Selkies' if wanted == 'auto' else wanted} in this image: expected "
        f"{'selkies-gstreamer or selkies' if wanted == 'auto' else wanted} on PATH "
        "or VDI_SELKIES_COMMAND"
    )
