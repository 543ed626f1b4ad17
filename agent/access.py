"""Who may open the desktop, kept in Selkies 2.x: the session's shares and disconnect requests
followed from the control plane (`GET /v1/sessions/{id}/access`, a long poll with the agent
token), Selkies' token table kept equal to them (`POST /api/tokens` with the master token: the
user's own token, the session's password, and each live share's), each share dropped at its
expiry, and the pages asked to go disconnected (`DELETE /api/sessions/{id}`).

Selkies itself enforces what a token's role allows (a viewer's input, clipboard, uploads and
downloads are refused; a page whose token leaves the table is disconnected at once). What it
cannot know is kept here: which shares exist and until when. The table is pushed again after
the streamer restarts (it keeps it in memory only). The control plane never reaches the pod:
the agent asks, so nothing new listens in the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from agent.callbacks import FINAL_ANSWERS
from agent.streamers import StreamConfig

log = structlog.get_logger("vdi.agent.access")

WAIT_S = 25.0  # the long poll's wait: an answer at least this often
RETRY_S = (0.5, 15.0)  # the backoff while the control plane (or Selkies) cannot be reached
DONE_KEPT = 256  # disconnect requests remembered as done


def token_digest(token: str) -> str:
    """How a token is named between the agent and its launcher (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Grant:
    """A share's token as Selkies must hold it."""

    share: str
    role: str  # viewer, collaborator
    token: str
    expires_at: float  # epoch seconds

    @property
    def selkies_role(self) -> str:
        # a collaborator drives the keyboard and mouse: Selkies' controller (no mk_control, so
        # every controller may); a viewer stays a viewer (enable_collab is off)
        return "controller" if self.role == "collaborator" else "viewer"


@dataclass
class AccessKeeper:
    callback_url: str
    session_id: str
    agent_token: str
    config: StreamConfig
    grants: list[Grant] = field(default_factory=list)
    disconnect: list[str] = field(default_factory=list)
    pushed: dict[str, Any] | None = None
    # the recording asked for ({wanted, request, name}) and what Selkies said of it (reported)
    recording_asked: dict[str, Any] | None = None
    recording: dict[str, Any] | None = None
    _recording_done: tuple[str, bool] | None = None
    pushes: int = 0
    stopped: bool = False
    _digest: str | None = None
    _done: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    # set once Selkies holds a table (at once without secure mode): before it, Selkies refuses
    # every page, the user's own too, so the first report (Running) waits for it
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"{self.callback_url.rstrip('/')}/v1/sessions/{self.session_id}/access"

    def table(self, now: float) -> dict[str, dict[str, Any]]:
        """Selkies' token table now: the user's own token (a controller with gamepad slot 1),
        then each share that has not expired."""
        table: dict[str, dict[str, Any]] = {
            self.config.password: {"role": "controller", "slot": 1, "mk_control": False}
        }
        for grant in self.grants:
            if grant.expires_at > now:
                table[grant.token] = {"role": grant.selkies_role, "slot": None}
        return table

    def who(self, digest: str | None) -> tuple[str, str | None] | None:
        """(role, share) of the page whose token has this digest; None: not one we gave."""
        if digest is None:
            return None
        if digest == token_digest(self.config.password):
            return "owner", None
        for grant in self.grants:
            if digest == token_digest(grant.token):
                return grant.role, grant.share
        return None

    def invalidate(self) -> None:
        """The streamer restarted: its table is empty again."""
        self.pushed = None
        self._changed.set()

    async def run(self) -> None:
        """Follow the control plane and keep Selkies to it, until cancelled."""
        follower = asyncio.create_task(self._follow(), name="vdi-access-follow")
        try:
            await self._keep()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower

    async def _follow(self) -> None:
        delay = RETRY_S[0]
        headers = {"Authorization": f"Bearer {self.agent_token}"}
        async with httpx.AsyncClient(timeout=WAIT_S + 15) as http:
            while not self.stopped:
                params: dict[str, Any] = {"wait_s": WAIT_S if self._digest else 0}
                if self._digest:
                    params["known"] = self._digest
                try:
                    response = await http.get(self.url, params=params, headers=headers)
                except httpx.HTTPError as error:
                    log.warning("access not followed; retrying", error=type(error).__name__)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_S[1])
                    continue
                if response.status_code in FINAL_ANSWERS:
                    log.warning(
                        "access no longer followed", why=FINAL_ANSWERS[response.status_code]
                    )
                    self.stopped = True
                    self.grants = []
                    self._changed.set()
                    return
                try:
                    document = response.json() if response.is_success else None
                    self._take(document)
                except (ValueError, KeyError, TypeError) as error:
                    log.warning(
                        "access answer not understood",
                        status=response.status_code,
                        error=type(error).__name__,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_S[1])
                    continue
                delay = RETRY_S[0]

    def _take(self, document: Any) -> None:
        if not isinstance(document, dict):
            raise ValueError("not an access document")
        grants = [
            Grant(
                share=str(item["share"]),
                role=str(item["role"]),
                token=str(item["token"]),
                expires_at=_epoch(str(item["expires_at"])),
            )
            for item in document["tokens"]
        ]
        if not self.config.secure:
            grants = []  # no secure mode: Selkies has no table to keep
        self.grants = grants
        self.disconnect = [str(viewer) for viewer in document.get("disconnect") or []]
        asked = document.get("recording")
        self.recording_asked = dict(asked) if isinstance(asked, dict) else None
        if document["digest"] != self._digest:
            self._digest = str(document["digest"])
            self._changed.set()

    async def _keep(self) -> None:
        """Push the table when it changes (a share made, revoked, or expired; the streamer
        restarted), and carry out the disconnect requests."""
        delay = RETRY_S[0]
        self._changed.set()  # the user's own token, before the control plane has answered
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                now = time.time()
                expiries = [g.expires_at - now for g in self.grants if g.expires_at > now]
                wait = min([WAIT_S, *expiries])
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait, 0.05)):
                        await self._changed.wait()
                self._changed.clear()
                try:
                    await self._push(http)
                    await self._disconnect(http)
                    await self._record(http)
                except httpx.HTTPError as error:
                    log.info("streamer not reached; retrying", error=type(error).__name__)
                    self._changed.set()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_S[1])
                    continue
                delay = RETRY_S[0]

    async def _push(self, http: httpx.AsyncClient) -> None:
        if not self.config.secure:
            self.ready.set()
            return
        table = self.table(time.time())
        if table == self.pushed:
            return
        response = await http.post(
            f"{self.config.local_url}/api/tokens", json=table, headers=self.config.streamer_auth()
        )
        if response.status_code != 200:
            raise httpx.HTTPStatusError(
                f"the token table was refused ({response.status_code})",
                request=response.request,
                response=response,
            )
        self.pushed = table
        self.pushes += 1
        self.ready.set()
        log.info("token table set", tokens=len(table), shares=len(table) - 1)

    async def _disconnect(self, http: httpx.AsyncClient) -> None:
        for viewer in self.disconnect:
            if viewer in self._done:
                continue
            response = await http.delete(
                f"{self.config.local_url}/api/sessions/{viewer}",
                headers=self.config.streamer_auth(),
            )
            if response.status_code not in (204, 404):  # 404: gone already
                raise httpx.HTTPStatusError(
                    f"the disconnect was refused ({response.status_code})",
                    request=response.request,
                    response=response,
                )
            log.info("page disconnected", viewer=viewer, found=response.status_code == 204)
            self._done = [*self._done, viewer][-DONE_KEPT:]

    async def _record(self, http: httpx.AsyncClient) -> None:
        """Start or stop Selkies' recording as asked, once per ask (`POST`/`DELETE
        /api/recording`); what it answered is `recording`, for the next report."""
        asked = self.recording_asked
        if asked is None:
            return
        ask = (str(asked["request"]), bool(asked["wanted"]))
        if ask == self._recording_done:
            return
        if not ask[1] and not (self.recording or {}).get("active"):
            self._recording_done = ask  # nothing of ours records
            return
        url = f"{self.config.local_url}/api/recording"
        if ask[1]:
            body = {"path": asked["name"]} if asked.get("name") else {}
            response = await http.post(url, json=body, headers=self.config.streamer_auth())
        else:
            response = await http.delete(url, headers=self.config.streamer_auth())
        if response.status_code >= 500:
            raise httpx.HTTPStatusError(
                f"the recording request failed ({response.status_code})",
                request=response.request,
                response=response,
            )
        self._recording_done = ask
        state: dict[str, Any] = {"request": ask[0], "active": False}
        try:
            status = response.json() if response.is_success else None
        except ValueError:
            status = None
        if isinstance(status, dict):
            state.update(
                active=ask[1],
                path=status.get("path"),
                size_bytes=status.get("bytes"),
                duration_s=status.get("duration_s"),
            )
        else:
            state["error"] = f"Selkies refused ({response.status_code}): {response.text[:200]}"
        self.recording = {k: v for k, v in state.items() if v is not None}
        log.info("recording", **{k: v for k, v in self.recording.items() if k != "path"})


def _epoch(instant: str) -> float:
    parsed = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
