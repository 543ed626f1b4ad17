"""Fresh TURN credentials for Selkies while the session lives.

The control plane hands out short-lived credentials (`VDI_TURN_CREDENTIAL_TTL_S`): coturn checks
one when a relay is allocated, so a relay in use stays up, but a credential copied out of the
pod stops opening relays soon after the session ends. Selkies allocates a relay for every
viewer connection, so its credentials must be fresh whenever a viewer connects: the agent
fetches new ones (`GET /v1/sessions/{id}/turn`, its agent token) at a third of their lifetime
and writes them to an RTC configuration file that both Selkies lines watch
(`SELKIES_RTC_CONFIG_JSON`: it overrides their other TURN settings and is re-read on every
change). The file lives in a directory only this user can read (0700/0600), as 2.x requires; the
agent token never reaches Selkies.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import structlog

from agent.callbacks import FINAL_ANSWERS
from agent.streamers import StreamConfig

log = structlog.get_logger("vdi.agent.turn")

RTC_CONFIG_ENV = "SELKIES_RTC_CONFIG_JSON"
RETRY_S = 30.0


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    ttl_s: float


class TurnRenewal:
    def __init__(
        self,
        callback_url: str,
        session_id: str,
        token: str,
        config: StreamConfig,
        *,
        on_secret: Callable[[str], None] = lambda secret: None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = f"{callback_url.rstrip('/')}/v1/sessions/{session_id}/turn"
        self.token = token
        self.config = config
        self.on_secret = on_secret
        self.timeout_s = timeout_s
        self.directory = Path(tempfile.mkdtemp(prefix="vdi-turn-"))  # 0700
        self.path = self.directory / "rtc.json"
        self.current: Credentials | None = None
        self.renewals = 0
        self.ended = False

    async def fetch(self) -> Credentials | None:
        """Fresh credentials, or None (unreachable, or the session has ended: `ended`)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                response = await http.get(self.url, headers=headers)
        except httpx.HTTPError as error:
            log.warning("TURN renewal: control plane unreachable", error=type(error).__name__)
            return None
        if response.status_code in FINAL_ANSWERS:
            log.warning(
                f"TURN renewal stops: {FINAL_ANSWERS[response.status_code]}",
                status=response.status_code,
            )
            self.ended = True
            return None
        if not response.is_success:
            log.warning("TURN renewal: the control plane answered", status=response.status_code)
            return None
        body = response.json()
        return Credentials(body["username"], body["password"], float(body["ttl_s"]))

    def write(self, credentials: Credentials) -> None:
        """In place (truncate, write, close): 1.x reloads on the file's close, 2.x on a close
        or a rename; 0600, as 2.x refuses a file others can write."""
        self.on_secret(credentials.password)
        host, port = self.config.turn_host, self.config.turn_port
        stun_host = self.config.stun_host or host
        rtc = {
            "lifetimeDuration": f"{int(credentials.ttl_s)}s",
            "blockStatus": "NOT_BLOCKED",
            "iceTransportPolicy": "all",
            "iceServers": [
                {"urls": [f"stun:{stun_host}:{self.config.stun_port or port}"]},
                {
                    "urls": [f"turn:{host}:{port}?transport=udp"],
                    "username": credentials.username,
                    "credential": credentials.password,
                },
            ],
        }
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(rtc, out)
        self.current = credentials

    async def start(self) -> Path:
        """The first file, before Selkies starts: fresh credentials, else the pod's own (valid
        through the session's start)."""
        fresh = await self.fetch()
        if fresh is None:
            ttl = 60.0  # retry soon: the pod's credentials are valid only through the start
            fresh = Credentials(self.config.turn_username, self.config.turn_password, ttl)
        self.write(fresh)
        return self.path

    def interval_s(self) -> float:
        assert self.current is not None
        return max(1.0, self.current.ttl_s / 3)

    async def run(self) -> None:
        """Renew at a third of the lifetime until the session ends; retry sooner on failure."""
        while not self.ended:
            await asyncio.sleep(self.interval_s())
            fresh = await self.fetch()
            while fresh is None and not self.ended:
                await asyncio.sleep(min(RETRY_S, self.interval_s()))
                fresh = await self.fetch()
            if fresh is not None:
                self.write(fresh)
                self.renewals += 1
                log.info("TURN credentials renewed", ttl_s=fresh.ttl_s, renewals=self.renewals)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


class NoRelay:
    """A local desktop without a TURN host (VDI_TURN=none): an RTC configuration that lists no
    ICE server at all, so Selkies offers only its host candidates (this machine's addresses,
    all a viewer on it needs) instead of its defaults, public STUN servers."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="vdi-rtc-"))  # 0700
        self.path = self.directory / "rtc.json"
        rtc = {
            "lifetimeDuration": "86400s",
            "blockStatus": "NOT_BLOCKED",
            "iceTransportPolicy": "all",
            "iceServers": [],
        }
        descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(rtc, out)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
