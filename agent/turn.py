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

The renewal is supervised: any failure (the control plane away, an answer that is not
credentials, such as a proxy's HTML page, or the file not writable) is retried with a backoff
that never waits past the current credential's expiry, and is reported: the `relay` check says
the renewal is failing, and once the current credential is within `EXPIRY_MARGIN_S` of its end
(or past it) the stream is marked unhealthy, since new viewers cannot get a relay.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from agent.callbacks import FINAL_ANSWERS
from agent.streamers import StreamConfig

log = structlog.get_logger("vdi.agent.turn")

RTC_CONFIG_ENV = "SELKIES_RTC_CONFIG_JSON"
RETRY_S = 30.0  # the longest wait between two failed renewals
FIRST_RETRY_S = 1.0
EXPIRY_MARGIN_S = 60.0  # this close to the credential's end, the stream is reported unhealthy
RELAY_FAILING = "TurnRenewalFailing"
RELAY_EXPIRING = "TurnCredentialsExpiring"


class RenewalFailed(Exception):
    """One renewal that did not give usable credentials; the message says why (no secret)."""


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
        self.current_until = 0.0  # time.monotonic() at which `current` expires
        self.renewals = 0
        self.failures = 0  # consecutive
        self.last_error: str | None = None
        self.ended = False

    async def fetch(self) -> Credentials | None:
        """Fresh credentials; None when the session has ended (`ended`). Raises RenewalFailed
        for anything else that is not credentials."""
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as http:
                response = await http.get(self.url, headers=headers)
        except httpx.HTTPError as error:
            raise RenewalFailed(f"control plane unreachable ({type(error).__name__})") from None
        if response.status_code in FINAL_ANSWERS:
            log.warning(
                f"TURN renewal stops: {FINAL_ANSWERS[response.status_code]}",
                status=response.status_code,
            )
            self.ended = True
            return None
        if not response.is_success:
            raise RenewalFailed(f"the control plane answered {response.status_code}")
        try:
            body = response.json()
            credentials = Credentials(
                str(body["username"]), str(body["password"]), float(body["ttl_s"])
            )
        except (ValueError, KeyError, TypeError):
            kind = response.headers.get("content-type", "no content type")
            raise RenewalFailed(
                f"a {response.status_code} answer that is not credentials ({kind[:60]})"
            ) from None
        if not credentials.username or not credentials.password or credentials.ttl_s <= 0:
            raise RenewalFailed("credentials with an empty name, password or lifetime")
        return credentials

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
        try:
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                json.dump(rtc, out)
        except OSError as error:
            raise RenewalFailed(f"the RTC file could not be written ({error.strerror})") from None
        self.current = credentials
        self.current_until = time.monotonic() + credentials.ttl_s

    async def start(self) -> Path:
        """The first file, before Selkies starts: fresh credentials, else the pod's own (valid
        through the session's start)."""
        fresh: Credentials | None
        try:
            fresh = await self.fetch()
        except RenewalFailed as error:
            log.warning("TURN credentials: starting with the pod's own", why=str(error))
            fresh = None
        if fresh is None:
            ttl = 60.0  # retry soon: the pod's credentials are valid only through the start
            fresh = Credentials(self.config.turn_username, self.config.turn_password, ttl)
        self.write(fresh)
        return self.path

    def interval_s(self) -> float:
        assert self.current is not None
        return max(1.0, self.current.ttl_s / 3)

    def retry_in_s(self) -> float:
        """The wait before the next try after `failures` failures in a row: doubling from
        FIRST_RETRY_S up to RETRY_S, and never past the current credential's expiry margin."""
        backoff = min(RETRY_S, FIRST_RETRY_S * 2.0 ** max(0, self.failures - 1))
        left = self.current_until - EXPIRY_MARGIN_S - time.monotonic()
        return max(FIRST_RETRY_S, min(backoff, left)) if left > 0 else backoff

    async def renew_once(self) -> bool:
        """One try; True when new credentials are in the file. Never raises but for
        cancellation: every failure is counted, logged and kept for the report."""
        try:
            fresh = await self.fetch()
            if fresh is None:
                return False  # ended
            self.write(fresh)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # supervised: whatever it was, retry
            self.failures += 1
            self.last_error = str(error) if isinstance(error, RenewalFailed) else repr(error)
            log.warning(
                "TURN renewal failed; retrying",
                why=self.last_error,
                failures=self.failures,
                expires_in_s=round(self.current_until - time.monotonic()),
            )
            return False
        self.failures, self.last_error = 0, None
        self.renewals += 1
        log.info("TURN credentials renewed", ttl_s=fresh.ttl_s, renewals=self.renewals)
        return True

    async def run(self) -> None:
        """Renew at a third of the lifetime until the session ends; after a failure, retry
        with backoff (see retry_in_s)."""
        while not self.ended:
            await asyncio.sleep(self.interval_s() if self.failures == 0 else self.retry_in_s())
            await self.renew_once()

    def relay_check(self, now: float | None = None) -> dict[str, Any]:
        """The `relay` check for the health report: passing while renewals succeed; unknown
        (retrying) after a failure; failing once the credential is at its expiry margin."""
        now = time.monotonic() if now is None else now
        if self.failures == 0:
            return {"name": "relay", "ok": True, "code": None, "detail": None}
        left = self.current_until - now
        if left > EXPIRY_MARGIN_S:
            return {
                "name": "relay",
                "ok": None,
                "code": RELAY_FAILING,
                "detail": f"TURN renewal failing ({self.failures} in a row: {self.last_error}); "
                f"the current credential lasts {left:.0f} s more",
            }
        return {
            "name": "relay",
            "ok": False,
            "code": RELAY_EXPIRING,
            "detail": f"TURN renewal failing ({self.failures} in a row: {self.last_error}); "
            + (f"the credential expires in {left:.0f} s" if left > 0 else "the credential expired")
            + ": new viewers cannot get a relay",
        }

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
