"""Selkies-GStreamer under supervision: started with the chosen settings through its own
environment, restarted (bounded, with backoff) when it dies, each restart reported."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

log = structlog.get_logger("vdi.agent.supervisor")

METRICS_PORT = 9081
DEFAULT_PASSWORD = "mypasswd"  # Selkies' own default: never acceptable


class UnsafeConfiguration(Exception):
    """Selkies would start with its unsafe defaults (public TURN relay, default password)."""


@dataclass(frozen=True)
class StreamConfig:
    encoder: str
    framerate: int
    bitrate_kbps: int
    password: str
    turn_host: str
    turn_port: str
    turn_username: str
    turn_password: str
    stun_host: str
    stun_port: str


def selkies_environment(config: StreamConfig, base: Mapping[str, str]) -> dict[str, str]:
    if not config.turn_host or not config.turn_username or not config.turn_password:
        raise UnsafeConfiguration(
            "SELKIES_TURN_HOST and the session's TURN credentials must be set: "
            "without them Selkies falls back to a public relay"
        )
    if not config.password or config.password == DEFAULT_PASSWORD:
        raise UnsafeConfiguration("SELKIES_BASIC_AUTH_PASSWORD must be the session's password")
    env = dict(base)
    env.update(
        {
            "SELKIES_ENCODER": config.encoder,
            "SELKIES_FRAMERATE": str(config.framerate),
            "SELKIES_VIDEO_BITRATE": str(config.bitrate_kbps),
            "SELKIES_ENABLE_RESIZE": "true",
            "SELKIES_ENABLE_BASIC_AUTH": "true",
            "SELKIES_BASIC_AUTH_PASSWORD": config.password,
            "SELKIES_TURN_HOST": config.turn_host,
            "SELKIES_TURN_PORT": config.turn_port,
            "SELKIES_TURN_PROTOCOL": "udp",
            "SELKIES_TURN_USERNAME": config.turn_username,
            "SELKIES_TURN_PASSWORD": config.turn_password,
            "SELKIES_STUN_HOST": config.stun_host,
            "SELKIES_STUN_PORT": config.stun_port,
            "SELKIES_ENABLE_METRICS_HTTP": "true",
            "SELKIES_METRICS_HTTP_PORT": str(METRICS_PORT),
            "SELKIES_ENABLE_WEBRTC_STATISTICS": "true",
        }
    )
    return env


class Supervisor:
    """Runs `command` with the Selkies environment; restarts it up to `max_restarts` times."""

    def __init__(
        self,
        command: list[str],
        env: Mapping[str, str],
        *,
        on_restart: Callable[[int, int | None], Awaitable[None]],
        max_restarts: int = 5,
        first_backoff_s: float = 1.0,
    ) -> None:
        self.command = command
        self.env = dict(env)
        self.on_restart = on_restart
        self.max_restarts = max_restarts
        self.first_backoff_s = first_backoff_s
        self.restarts = 0
        self.process: asyncio.subprocess.Process | None = None
        self._stopping = False
        self._reconfiguring = False

    async def reconfigure(self, changes: Mapping[str, str]) -> None:
        """Restart Selkies with new settings (frame rate, bitrate): its pipeline takes them at
        start. The viewer reconnects by itself."""
        self.env.update(changes)
        if self.process is not None and self.process.returncode is None:
            self._reconfiguring = True
            os.kill(self.process.pid, signal.SIGTERM)

    async def run(self) -> int | None:
        """Until stopped or out of restarts; returns the last exit code."""
        backoff = self.first_backoff_s
        code: int | None = None
        while not self._stopping:
            self.process = await asyncio.create_subprocess_exec(*self.command, env=self.env)
            log.info("selkies started", pid=self.process.pid)
            code = await self.process.wait()
            if self._stopping:
                break
            if self._reconfiguring:  # we stopped it to apply new settings: not a failure
                self._reconfiguring = False
                continue
            if self.restarts >= self.max_restarts:
                log.error("selkies keeps dying; giving up", exit_code=code, restarts=self.restarts)
                break
            self.restarts += 1
            log.warning("selkies exited; restarting", exit_code=code, restart=self.restarts)
            await self.on_restart(self.restarts, code)
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
        return code

    async def stop(self) -> None:
        self._stopping = True
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout=10)
            except TimeoutError:
                os.kill(self.process.pid, signal.SIGKILL)
