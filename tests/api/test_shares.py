"""Shares of a desktop, its viewers and the agent's access document, through the API: the
template's sharing policy, roles, expiry, revocation, scopes, the agent's long poll, viewers
reported by the agent and their disconnection. (What Selkies makes of them, in Chromium:
tests/e2e/test_sharing.py.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from app.models import SessionShare
from app.models._types import utcnow
from app.security import agent_token, share_token
from tests.conftest import ADMIN, TEST_SECRET_KEY, bearer

MakeSession = Callable[..., Awaitable[dict[str, Any]]]
MakeToken = Callable[..., Awaitable[dict[str, str]]]
SetPhase = Callable[..., Awaitable[None]]

READY = {
    "checks": [{"name": "gpu", "ok": True}, {"name": "encoder", "ok": True}],
    "encoder": "h264enc/nvenc",
    "streamer": "selkies 2.1.0",
}


def agent(session_id: str) -> dict[str, str]:
    return bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(session_id)))


async def running_session(
    make_session: MakeSession, set_phase: SetPhase, user: str = "alice", **template: Any
) -> dict[str, Any]:
    session = await make_session(user, f"t-{user}", streamer="selkies", **template)
    await set_phase(session["id"], "Provisioning", "Starting", "Running")
    return session


async def events_of(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/sessions/{session_id}/events", headers=ADMIN)
    return list(response.json()["items"])


async def share(
    client: httpx.AsyncClient, session_id: str, role: str = "viewer", **body: Any
) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/shares", json={"role": role, **body}, headers=ADMIN
    )


async def test_a_template_without_sharing_refuses_every_share(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase)  # sharing: off, the default
    refused = await share(client, session["id"])
    assert refused.status_code == 403, refused.text
    problem = refused.json()
    assert problem["type"].endswith(":sharing-not-allowed")
    assert "sharing: off" in problem["detail"]
    assert "view or collab" in problem["detail"]
    listed = await client.get(f"/v1/sessions/{session['id']}/shares", headers=ADMIN)
    assert listed.json() == {"items": []}


async def test_a_view_only_template_makes_viewer_shares_and_no_collaborators(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="view")
    refused = await share(client, session["id"], "collaborator")
    assert refused.status_code == 403
    assert "role viewer" in refused.json()["detail"]

    made = await share(client, session["id"], "viewer", expires_in_s=600)
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    body = made.json()
    assert made.headers["location"] == f"/v1/sessions/{session['id']}/shares/{body['id']}"
    assert body["role"] == "viewer"
    assert body["state"] == "active"
    assert body["token"] == share_token(TEST_SECRET_KEY, uuid.UUID(body["id"]))
    assert body["link"] == f"{session['url']}#token={body['token']}"
    assert body["created_by"] == "bootstrap"
    lifetime = datetime.fromisoformat(body["expires_at"]) - datetime.fromisoformat(
        body["created_at"]
    )
    assert lifetime == timedelta(seconds=600)

    listed = (await client.get(f"/v1/sessions/{session['id']}/shares", headers=ADMIN)).json()
    assert [item["id"] for item in listed["items"]] == [body["id"]]
    assert "token" not in listed["items"][0]
    assert body["token"] not in str(listed)
    events = await events_of(client, session["id"])
    created = [e for e in events if e["type"] == "ShareCreated"]
    assert len(created) == 1
    assert created[0]["data"]["share"] == body["id"]
    assert body["token"] not in str(events)  # the token is in no log


async def test_a_share_never_outlives_its_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(
        make_session, set_phase, sharing="collab", idle_timeout_s=300, max_lifetime_s=600
    )
    made = (await share(client, session["id"], "collaborator", expires_in_s=86400)).json()
    assert datetime.fromisoformat(made["expires_at"]) == datetime.fromisoformat(
        session["expires_at"]
    )


async def test_shares_wait_for_a_desktop_and_end_with_the_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session("bob", "shared", streamer="selkies", sharing="view")
    early = await share(client, session["id"])
    assert early.status_code == 409
    assert early.headers["retry-after"] == "2"
    assert early.json()["type"].endswith(":session-not-ready")
    await set_phase(session["id"], "Provisioning", "Starting", "Running")
    made = (await share(client, session["id"])).json()
    access = await client.get(f"/v1/sessions/{session['id']}/access", headers=agent(session["id"]))
    assert [t["share"] for t in access.json()["tokens"]] == [made["id"]]

    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    late = await share(client, session["id"])
    assert late.status_code == 409
    assert late.json()["type"].endswith(":session-ended")
    access = await client.get(f"/v1/sessions/{session['id']}/access", headers=agent(session["id"]))
    assert access.json()["tokens"] == []  # an ended session's shares open nothing


async def test_revoking_drops_the_token_from_the_agents_document(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="collab")
    viewer = (await share(client, session["id"], "viewer")).json()
    collaborator = (await share(client, session["id"], "collaborator")).json()
    url = f"/v1/sessions/{session['id']}/access"
    first = (await client.get(url, headers=agent(session["id"]))).json()
    assert first["sharing"] == "collab"
    assert {(t["share"], t["role"], t["token"]) for t in first["tokens"]} == {
        (viewer["id"], "viewer", viewer["token"]),
        (collaborator["id"], "collaborator", collaborator["token"]),
    }

    revoked = await client.delete(
        f"/v1/sessions/{session['id']}/shares/{viewer['id']}", headers=ADMIN
    )
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    again = await client.delete(
        f"/v1/sessions/{session['id']}/shares/{viewer['id']}", headers=ADMIN
    )
    assert again.status_code == 200
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    after = (await client.get(url, headers=agent(session["id"]))).json()
    assert [t["share"] for t in after["tokens"]] == [collaborator["id"]]
    assert after["digest"] != first["digest"]
    types = [e["type"] for e in await events_of(client, session["id"])]
    assert types.count("ShareRevoked") == 1  # revoking twice is one revocation

    unknown = await client.delete(
        f"/v1/sessions/{session['id']}/shares/{uuid.uuid4()}", headers=ADMIN
    )
    assert unknown.status_code == 404
    assert unknown.json()["type"].endswith(":share-not-found")


async def test_an_expired_share_leaves_the_document_and_says_so(
    client: httpx.AsyncClient, app: FastAPI, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="view")
    made = (await share(client, session["id"], expires_in_s=60)).json()
    async with app.state.sessionmaker() as db, db.begin():
        await db.execute(
            update(SessionShare)
            .where(SessionShare.id == uuid.UUID(made["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    access = await client.get(f"/v1/sessions/{session['id']}/access", headers=agent(session["id"]))
    assert access.json()["tokens"] == []
    listed = (await client.get(f"/v1/sessions/{session['id']}/shares", headers=ADMIN)).json()
    assert listed["items"][0]["state"] == "expired"


async def test_the_agents_long_poll_wakes_on_a_new_share(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="view")
    url = f"/v1/sessions/{session['id']}/access"
    known = (await client.get(url, headers=agent(session["id"]))).json()["digest"]
    started = time.monotonic()
    waiting = asyncio.create_task(
        client.get(url, params={"known": known, "wait_s": 20}, headers=agent(session["id"]))
    )
    await asyncio.sleep(0.5)
    assert not waiting.done()  # nothing changed: it waits
    made = (await share(client, session["id"])).json()
    answered = (await asyncio.wait_for(waiting, 10)).json()
    assert time.monotonic() - started < 10
    assert [t["token"] for t in answered["tokens"]] == [made["token"]]
    # unchanged, it answers at the end of its wait with the same digest
    same = await client.get(
        url, params={"known": answered["digest"], "wait_s": 0.3}, headers=agent(session["id"])
    )
    assert same.json()["digest"] == answered["digest"]


async def test_only_this_sessions_agent_reads_its_access(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    mine = await running_session(make_session, set_phase, "alice", sharing="view")
    other = await running_session(make_session, set_phase, "bob", sharing="view")
    url = f"/v1/sessions/{mine['id']}/access"
    assert (await client.get(url, headers=agent(other["id"]))).status_code == 403
    assert (await client.get(url, headers=ADMIN)).status_code == 403  # not an agent token
    assert (await client.get(url)).status_code == 401


async def test_sharing_needs_the_connect_scope(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase, make_token: MakeToken
) -> None:
    session = await running_session(make_session, set_phase, sharing="view")
    reader = await make_token("sessions:read", name="reader")
    writer = await make_token("sessions:write", name="writer")
    connector = await make_token("sessions:connect", name="portal")
    url = f"/v1/sessions/{session['id']}/shares"
    for headers in (reader, writer):
        refused = await client.post(url, json={"role": "viewer"}, headers=headers)
        assert refused.status_code == 403
        assert "sessions:connect" in refused.json()["detail"]
    made = await client.post(url, json={"role": "viewer"}, headers=connector)
    assert made.status_code == 201
    assert made.json()["created_by"] == "portal"
    assert (await client.get(url, headers=reader)).status_code == 200
    revoke = f"{url}/{made.json()['id']}"
    assert (await client.delete(revoke, headers=reader)).status_code == 403
    assert (await client.delete(revoke, headers=connector)).status_code == 200


async def test_bad_share_requests_say_what_was_wrong(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="collab")
    for body, field in (
        ({"role": "owner"}, "role"),
        ({"role": "viewer", "expires_in_s": 10}, "expires_in_s"),
        ({"role": "viewer", "expires_in_s": 8 * 86400}, "expires_in_s"),
        ({"role": "viewer", "token": "mine"}, "token"),
    ):
        refused = await client.post(
            f"/v1/sessions/{session['id']}/shares", json=body, headers=ADMIN
        )
        assert refused.status_code == 422, body
        assert field in str(refused.json()["errors"]), refused.json()
    missing = await share(client, str(uuid.uuid4()))
    assert missing.status_code == 404


async def test_a_template_on_selkies_gstreamer_cannot_share(client: httpx.AsyncClient) -> None:
    refused = await client.put(
        "/v1/templates/old",
        json={"image": "i", "streamer": "selkies-gstreamer", "sharing": "view"},
        headers=ADMIN,
    )
    assert refused.status_code == 422
    assert "sharing: view (1.x has no secure mode" in refused.text


async def test_the_connection_opens_with_the_users_token_where_the_template_shares(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    private = await running_session(make_session, set_phase, "alice")
    shared = await running_session(make_session, set_phase, "bob", sharing="view")
    plain = (await client.get(f"/v1/sessions/{private['id']}/connection", headers=ADMIN)).json()
    assert plain["launch_url"] == plain["url"]
    secure = (await client.get(f"/v1/sessions/{shared['id']}/connection", headers=ADMIN)).json()
    assert secure["launch_url"] == f"{secure['url']}#token={secure['password']}"


def viewer(page: str, role: str, share_id: str | None = None) -> dict[str, Any]:
    return {
        "id": page,
        "role": role,
        "share": share_id,
        "since": "2026-12-07T12:00:00.500Z",
        "address": "10.0.0.7",
    }


async def test_viewers_reported_by_the_agent_show_and_come_and_go_as_events(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase, sharing="view")
    assert session["viewers"] is None
    made = (await share(client, session["id"])).json()
    health = f"/v1/sessions/{session['id']}/health"
    both = [viewer("client-1", "owner"), viewer("client-2", "viewer", made["id"])]
    reported = await client.post(
        health, json={**READY, "viewers": both}, headers=agent(session["id"])
    )
    assert reported.status_code == 200, reported.text
    shown = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert [(v["id"], v["role"], v["share"]) for v in shown["viewers"]] == [
        ("client-1", "owner", None),
        ("client-2", "viewer", made["id"]),
    ]
    assert shown["viewers"][0]["since"] == "2026-12-07T12:00:00.500000Z"
    assert shown["viewers"][0]["address"] == "10.0.0.7"
    # the same again changes nothing; one leaving is one event
    await client.post(health, json={**READY, "viewers": both}, headers=agent(session["id"]))
    await client.post(health, json={**READY, "viewers": both[:1]}, headers=agent(session["id"]))
    events = [e for e in await events_of(client, session["id"]) if "Viewer" in e["type"]]
    assert [(e["type"], e["data"]["viewer"], e["reason"]) for e in events] == [
        ("ViewerConnected", "client-1", "owner"),
        ("ViewerConnected", "client-2", "viewer"),
        ("ViewerDisconnected", "client-2", "viewer"),
    ]
    assert events[1]["data"]["share"] == made["id"]
    listed = (await client.get("/v1/sessions", headers=ADMIN)).json()["items"]
    assert [v["id"] for v in listed[0]["viewers"]] == ["client-1"]


async def test_disconnecting_a_viewer_asks_the_agent(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(make_session, set_phase)
    health = f"/v1/sessions/{session['id']}/health"
    pages = [viewer("client-a", "owner"), viewer("client-b", "owner")]
    await client.post(health, json={**READY, "viewers": pages}, headers=agent(session["id"]))
    missing = await client.delete(f"/v1/sessions/{session['id']}/viewers/client-z", headers=ADMIN)
    assert missing.status_code == 404
    assert "client-a, client-b" in missing.json()["detail"]
    bad = await client.delete(f"/v1/sessions/{session['id']}/viewers/a%20b", headers=ADMIN)
    assert bad.status_code == 422

    asked = await client.delete(f"/v1/sessions/{session['id']}/viewers/client-b", headers=ADMIN)
    assert asked.status_code == 202
    assert asked.json()["id"] == "client-b"
    access = await client.get(f"/v1/sessions/{session['id']}/access", headers=agent(session["id"]))
    assert access.json()["disconnect"] == ["client-b"]
    assert access.json()["tokens"] == []  # sharing off: no tokens, but disconnects still
    requested = [
        e
        for e in await events_of(client, session["id"])
        if e["type"] == "ViewerDisconnectRequested"
    ]
    assert requested[0]["data"]["by"] == "bootstrap"


async def test_idle_both_counts_keepalives_and_viewers(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await running_session(
        make_session, set_phase, idle="both", idle_timeout_s=600, max_lifetime_s=7200
    )
    health = f"/v1/sessions/{session['id']}/health"
    keepalive = f"/v1/sessions/{session['id']}/keepalive"
    kept = (await client.post(keepalive, headers=ADMIN)).json()
    assert datetime.fromisoformat(kept["idle_deadline"]) > datetime.fromisoformat(
        session["idle_deadline"]
    )  # no viewer: the keepalive pushed it
    watched = await client.post(
        health,
        json={**READY, "viewers": [viewer("client-1", "owner")]},
        headers=agent(session["id"]),
    )
    assert watched.json()["idle_deadline"] == watched.json()["expires_at"]
    again = (await client.post(keepalive, headers=ADMIN)).json()
    assert again["idle_deadline"] == again["expires_at"]  # a keepalive never shortens it
    left = await client.post(health, json={**READY, "viewers": []}, headers=agent(session["id"]))
    assert "unless a page connects or a keepalive comes" in left.json()["message"]


async def test_idle_by_viewers_needs_selkies_2(client: httpx.AsyncClient) -> None:
    refused = await client.put(
        "/v1/templates/old",
        json={"image": "i", "streamer": "selkies-gstreamer", "idle": "viewers"},
        headers=ADMIN,
    )
    assert refused.status_code == 422
    assert "idle: viewers (1.x cannot tell who is connected)" in refused.text


async def test_recording_is_asked_of_the_agent_and_its_answer_shown(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    plain = await running_session(make_session, set_phase, "bob")
    refused = await client.post(f"/v1/sessions/{plain['id']}/recording", headers=ADMIN)
    assert refused.status_code == 403
    assert refused.json()["type"].endswith(":recording-not-allowed")

    session = await running_session(make_session, set_phase, recording=True)
    url = f"/v1/sessions/{session['id']}/recording"
    never = await client.delete(url, headers=ADMIN)
    assert never.status_code == 404
    bad = await client.post(url, json={"name": "../etc/passwd"}, headers=ADMIN)
    assert bad.status_code == 422
    asked = await client.post(url, json={"name": "talk.mp4"}, headers=ADMIN)
    assert asked.status_code == 202, asked.text
    request = asked.json()["request"]
    assert asked.json()["active"] is None
    assert (await client.post(url, headers=ADMIN)).status_code == 409  # one at a time
    access = f"/v1/sessions/{session['id']}/access"
    document = (await client.get(access, headers=agent(session["id"]))).json()
    assert document["recording"] == {"wanted": True, "request": request, "name": "talk.mp4"}

    health = f"/v1/sessions/{session['id']}/health"
    said = {"request": request, "active": True, "path": "/home/user/Desktop/talk.mp4"}
    await client.post(health, json={**READY, "recording": said}, headers=agent(session["id"]))
    shown = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert shown["recording"]["active"] is True
    assert shown["recording"]["path"] == said["path"]
    stale = {"request": str(uuid.uuid4()), "active": False}  # about another ask: not taken
    await client.post(health, json={**READY, "recording": stale}, headers=agent(session["id"]))
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()["recording"][
        "active"
    ]

    stopped = await client.delete(url, headers=ADMIN)
    assert stopped.status_code == 202
    assert stopped.json()["wanted"] is False
    assert (await client.delete(url, headers=ADMIN)).status_code == 202  # again: no error
    document = (await client.get(access, headers=agent(session["id"]))).json()
    assert document["recording"]["wanted"] is False
    reasons = [
        e["reason"]
        for e in await events_of(client, session["id"])
        if e["type"] == "RecordingRequested"
    ]
    assert reasons == ["Start", "Stop"]
