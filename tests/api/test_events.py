"""The event log, and its live stream across replicas (Postgres LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import sqlalchemy
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.security import agent_token
from app.sessions import service as sessions_service
from harness.servers import serve
from tests.conftest import ADMIN, TEST_SECRET_KEY, bearer, running

MakeSession = Callable[..., Awaitable[dict[str, Any]]]


async def test_event_log_lists_transitions_in_order(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: Callable[..., Awaitable[None]]
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning")
    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()[
        "items"
    ]
    assert [(e["phase"], e["reason"]) for e in events] == [
        ("Pending", "Created"),
        ("Provisioning", "Provisioning"),
        ("Terminating", "DeleteRequested"),
    ]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    after = (
        await client.get(
            f"/v1/sessions/{session['id']}/events", params={"after": events[0]["id"]}, headers=ADMIN
        )
    ).json()
    assert [e["id"] for e in after["items"]] == [e["id"] for e in events[1:]]


async def _sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in fields:
                yield {
                    "id": int(fields["id"]),
                    "event": fields["event"],
                    **json.loads(fields["data"]),
                }
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


@pytest.fixture
def replica_b(settings: Settings, database_url: str) -> FastAPI:
    return create_app(settings, database_url)


async def test_stream_from_another_replica_is_live_and_ends_when_terminated(
    app: FastAPI,
    replica_b: FastAPI,
    make_session: MakeSession,
    set_phase: Callable[..., Awaitable[None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No polling fallback: only NOTIFY can wake the stream, so this proves it crosses replicas.
    monkeypatch.setattr(sessions_service, "POLL_INTERVAL_S", 3600.0)
    session = await make_session()
    sid = session["id"]
    received: list[dict[str, Any]] = []
    async with (
        serve(app) as url_a,
        serve(replica_b) as url_b,
        httpx.AsyncClient(timeout=30) as http,
    ):
        async with http.stream(
            "GET",
            f"{url_b}/v1/sessions/{sid}/events",
            headers={**ADMIN, "Accept": "text/event-stream"},
        ) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = _sse_events(stream)
            received.append(await anext(events))  # the log so far
            assert received[0]["reason"] == "Created"

            await set_phase(sid, "Provisioning", "Starting")
            received += [await anext(events), await anext(events)]
            assert [e["phase"] for e in received[1:]] == ["Provisioning", "Starting"]

            ready = {
                "checks": [{"name": "gpu", "ok": True}, {"name": "encoder", "ok": True}],
                "encoder": "nvh264enc",
            }
            reported = await http.post(
                f"{url_a}/v1/sessions/{sid}/health",
                json=ready,
                headers=bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(sid))),
            )
            assert reported.json()["phase"] == "Running"
            deleted = await http.delete(f"{url_a}/v1/sessions/{sid}", headers=ADMIN)
            assert deleted.status_code == 202
            await set_phase(sid, "Terminated")
            async with asyncio.timeout(20):
                received += [event async for event in events]  # ends by itself
    phases = [e["phase"] for e in received if e["event"] == "PhaseChanged"]
    assert phases == ["Pending", "Provisioning", "Starting", "Running", "Terminating", "Terminated"]
    assert [e["id"] for e in received] == sorted({e["id"] for e in received})


async def test_stream_resumes_after_last_event_id(
    app: FastAPI, make_session: MakeSession, set_phase: Callable[..., Awaitable[None]]
) -> None:
    session = await make_session()
    sid = session["id"]
    await set_phase(sid, "Provisioning", "Starting", "Running", "Terminating", "Terminated")
    async with serve(app) as url, httpx.AsyncClient(timeout=30) as http:
        full = (await http.get(f"{url}/v1/sessions/{sid}/events", headers=ADMIN)).json()["items"]
        async with http.stream(
            "GET",
            f"{url}/v1/sessions/{sid}/events",
            headers={**ADMIN, "Accept": "text/event-stream", "Last-Event-ID": str(full[2]["id"])},
        ) as stream:
            resumed = [event async for event in _sse_events(stream)]
    assert [e["id"] for e in resumed] == [e["id"] for e in full[3:]]


async def test_streams_are_bounded_hold_no_connection_and_end_when_their_token_is_revoked(
    settings: Settings, database_url: str, make_session: MakeSession
) -> None:
    bounded = create_app(
        settings.model_copy(update={"max_streams_per_token": 2, "max_streams_per_replica": 3}),
        database_url,
    )
    session = await make_session()
    sid = session["id"]
    async with running(bounded), serve(bounded) as url, httpx.AsyncClient(timeout=30) as http:
        created = await http.post(
            f"{url}/v1/tokens", json={"name": "portal", "scopes": ["sessions:read"]}, headers=ADMIN
        )
        portal, portal_id = bearer(created.json()["token"]), created.json()["id"]
        other = bearer(
            (
                await http.post(
                    f"{url}/v1/tokens",
                    json={"name": "other", "scopes": ["sessions:read"]},
                    headers=ADMIN,
                )
            ).json()["token"]
        )
        events_url = f"{url}/v1/sessions/{sid}/events"
        accept = {"Accept": "text/event-stream"}
        # an unknown session's stream is a 404 and gives its slot back
        unknown = f"{url}/v1/sessions/{uuid.uuid4()}/events"
        for _ in range(3):
            assert (await http.get(unknown, headers={**portal, **accept})).status_code == 404
        assert bounded.state.streams.open_count == 0
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for headers in (portal, portal, ADMIN):
                stream = await stack.enter_async_context(
                    http.stream("GET", events_url, headers={**headers, **accept})
                )
                assert stream.status_code == 200
                events = _sse_events(stream)
                assert (await anext(events))["reason"] == "Created"
                streams.append(events)

            # Waiting streams hold no database connection.
            assert bounded.state.engine.sync_engine.pool.checkedout() == 0

            # Over the bound: a 429 that runs no SQL (finding 27.22: opens used to read the
            # log first, so a flood of them queued on the pool ahead of everyone else).
            statements: list[str] = []

            def count(*args: object) -> None:
                statements.append(str(args[2]))

            engine = bounded.state.engine.sync_engine
            sqlalchemy.event.listen(engine, "before_cursor_execute", count)
            try:
                refused = [
                    (await http.get(events_url, headers={**portal, **accept})).status_code
                    for _ in range(20)
                ]
            finally:
                sqlalchemy.event.remove(engine, "before_cursor_execute", count)
            assert refused == [429] * 20
            assert statements == []

            third = await http.get(events_url, headers={**portal, **accept})
            assert third.status_code == 429  # the token's bound
            assert third.headers["retry-after"] == "5"
            assert "VDI_MAX_STREAMS_PER_TOKEN" in third.json()["detail"]
            full = await http.get(events_url, headers={**other, **accept})
            assert full.status_code == 429  # the replica's bound
            assert "VDI_MAX_STREAMS_PER_REPLICA" in full.json()["detail"]
            # the plain event log is no stream: not bounded
            assert (await http.get(events_url, headers=portal)).status_code == 200

            revoked = await http.delete(f"{url}/v1/tokens/{portal_id}", headers=ADMIN)
            assert revoked.status_code == 204
            async with asyncio.timeout(10):
                for events in streams[:2]:  # the revoked token's streams end by themselves
                    assert [e async for e in events] == []
            assert bounded.state.streams.open_count == 1  # the admin's stream stays open
        # closed by the client: released
        for _ in range(100):
            if bounded.state.streams.open_count == 0:
                break
            await asyncio.sleep(0.05)
        assert bounded.state.streams.open_count == 0
