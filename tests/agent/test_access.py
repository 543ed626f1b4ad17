"""The agent's access keeper against the real control plane and a stand-in for Selkies' token
and session API (a small HTTP server that records what it is asked): the user's own token
first, each share added and dropped (revoked, expired by the agent's own clock), the table
again after a restart, a disconnect request carried out once, and the mapping of a page's
token to its share. (The real Selkies with Chromium: tests/e2e/test_sharing.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from agent.access import AccessKeeper, Grant, token_digest
from agent.streamers import Permissions, StreamConfig, UnsafeConfiguration
from agent.streamers.selkies import Selkies
from app.security import agent_token
from harness.servers import serve
from tests.conftest import ADMIN, TEST_SECRET_KEY
from tests.test_cli import free_port

MakeSession = Callable[..., Awaitable[dict[str, Any]]]
MASTER = "m" * 64
PASSWORD = "the-users-own-password"


class FakeSelkies(http.server.ThreadingHTTPServer):
    """Records the token tables pushed and the pages disconnected, with the auth sent."""

    def __init__(self, port: int) -> None:
        self.tables: list[dict[str, Any]] = []
        self.disconnected: list[str] = []
        self.auth: set[str] = set()
        super().__init__(("127.0.0.1", port), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FakeSelkies

    def do_POST(self) -> None:
        self.server.auth.add(self.headers.get("Authorization", ""))
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/api/tokens":
            self.server.tables.append(json.loads(body))
        self._answer(200)

    def do_DELETE(self) -> None:
        self.server.auth.add(self.headers.get("Authorization", ""))
        self.server.disconnected.append(self.path.rsplit("/", 1)[-1])
        self._answer(204)

    def _answer(self, status: int) -> None:
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def fake_selkies() -> Iterator[FakeSelkies]:
    server = FakeSelkies(free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def config(port: int, sharing: str = "collab", **overrides: Any) -> StreamConfig:
    values: dict[str, Any] = {
        "encoder": "h264enc/x264",
        "fallback": True,
        "framerate": 60,
        "bitrate_kbps": 8000,
        "gop_size": 30,
        "password": PASSWORD,
        "user": "user",
        "turn_host": "turn.example",
        "turn_port": "3478",
        "turn_username": "1:x",
        "turn_password": "p",
        "stun_host": "turn.example",
        "stun_port": "3478",
        "port": port,
        "listen_addr": "127.0.0.1",
        "permissions": Permissions(sharing=sharing),
        "master_token": MASTER,
    }
    return StreamConfig(**{**values, **overrides})


async def until(check: Callable[[], Any], what: str, timeout_s: float = 10) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (found := check()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        await asyncio.sleep(0.05)
    return found


async def test_the_token_table_follows_the_shares(
    app: FastAPI,
    make_session: MakeSession,
    set_phase: Callable[..., Awaitable[None]],
) -> None:
    session = await make_session("alice", "shared", streamer="selkies", sharing="collab")
    await set_phase(session["id"], "Provisioning", "Starting", "Running")
    port = free_port()
    api = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    with fake_selkies() as selkies:
        keeper = AccessKeeper(
            f"http://127.0.0.1:{port}",
            session["id"],
            agent_token(TEST_SECRET_KEY, uuid.UUID(session["id"])),
            config(selkies.server_address[1]),
        )
        async with serve(app, port=port), api:
            running = asyncio.create_task(keeper.run())
            try:
                await asyncio.wait_for(keeper.ready.wait(), 10)
                owner = {PASSWORD: {"role": "controller", "slot": 1, "mk_control": False}}
                assert selkies.tables[0] == owner  # the user's own token, before any share
                assert selkies.auth == {f"Bearer {MASTER}"}

                made = await api.post(
                    f"/v1/sessions/{session['id']}/shares",
                    json={"role": "viewer"},
                    headers=ADMIN,
                )
                viewer = made.json()
                asked = time.monotonic()
                await until(lambda: viewer["token"] in selkies.tables[-1], "the share pushed")
                print(f"share in Selkies' table {time.monotonic() - asked:.3f} s after its POST")
                assert selkies.tables[-1][viewer["token"]] == {"role": "viewer", "slot": None}
                collaborator = (
                    await api.post(
                        f"/v1/sessions/{session['id']}/shares",
                        json={"role": "collaborator"},
                        headers=ADMIN,
                    )
                ).json()
                await until(lambda: collaborator["token"] in selkies.tables[-1], "collaborator")
                # a collaborator drives keyboard and mouse: a controller's token, no mk_control
                assert selkies.tables[-1][collaborator["token"]] == {
                    "role": "controller",
                    "slot": None,
                }
                assert keeper.who(token_digest(viewer["token"])) == ("viewer", viewer["id"])
                assert keeper.who(token_digest(PASSWORD)) == ("owner", None)
                assert keeper.who(token_digest("someone else's")) is None

                await api.delete(
                    f"/v1/sessions/{session['id']}/shares/{viewer['id']}", headers=ADMIN
                )
                asked = time.monotonic()
                await until(lambda: viewer["token"] not in selkies.tables[-1], "revoked")
                print(f"revoked from Selkies' table {time.monotonic() - asked:.3f} s after")

                pushes = len(selkies.tables)
                keeper.invalidate()  # Selkies restarted: the same table again
                await until(lambda: len(selkies.tables) > pushes, "pushed after a restart")
                assert selkies.tables[-1] == selkies.tables[pushes - 1]
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running


async def test_a_share_leaves_the_table_at_its_expiry_by_the_agents_clock() -> None:
    with fake_selkies() as selkies:
        # a control plane that never answers: the agent's own clock drops the share
        keeper = AccessKeeper(
            "http://127.0.0.1:9", str(uuid.uuid4()), "t", config(selkies.server_address[1])
        )
        keeper.grants = [Grant("s1", "viewer", "share-token", time.time() + 0.6)]
        running = asyncio.create_task(keeper._keep())
        try:
            await until(lambda: selkies.tables and "share-token" in selkies.tables[-1], "pushed")
            started = time.monotonic()
            await until(lambda: "share-token" not in selkies.tables[-1], "expired", 5)
            assert time.monotonic() - started < 2
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_a_disconnect_request_is_carried_out_once_without_secure_mode() -> None:
    with fake_selkies() as selkies:
        plain = config(selkies.server_address[1], sharing="off", master_token="")
        keeper = AccessKeeper("http://127.0.0.1:9", str(uuid.uuid4()), "t", plain)
        keeper._take({"digest": "a", "tokens": [], "disconnect": ["client-1"]})
        running = asyncio.create_task(keeper._keep())
        try:
            await until(lambda: selkies.disconnected, "disconnected")
            keeper._take({"digest": "b", "tokens": [], "disconnect": ["client-1", "client-2"]})
            await until(lambda: len(selkies.disconnected) == 2, "the second")
            await asyncio.sleep(0.3)
            assert selkies.disconnected == ["client-1", "client-2"]
            assert selkies.tables == []  # no secure mode: no table to set
            assert keeper.ready.is_set()
            assert all(auth.startswith("Basic ") for auth in selkies.auth)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def test_secure_mode_is_selkies_settings_and_needs_the_master_token() -> None:
    streamer = Selkies(["selkies"], "2.1.0")
    secure = streamer.environment(config(8080), {"SELKIES_MASTER_TOKEN": MASTER})
    assert secure["SELKIES_MASTER_TOKEN"] == MASTER
    assert secure["SELKIES_ENABLE_BASIC_AUTH"] == "false"
    assert secure["SELKIES_ENABLE_SHARING"] == "true|locked"
    assert secure["SELKIES_ENABLE_COLLAB"] == "false|locked"  # a viewer never types
    assert secure["SELKIES_ENABLE_SHARED"] == "false|locked"  # no token-less #shared links
    plain = streamer.environment(config(8080, sharing="off"), {"SELKIES_MASTER_TOKEN": MASTER})
    assert "SELKIES_MASTER_TOKEN" not in plain  # not in secure mode, not in its environment
    assert plain["SELKIES_ENABLE_BASIC_AUTH"] == "true"
    with pytest.raises(UnsafeConfiguration, match="SELKIES_MASTER_TOKEN"):
        streamer.environment(config(8080, master_token=""), {})
    assert MASTER in config(8080).secrets  # masked in the streamer's output
