"""/v1/sessions: create, list, get, delete, keepalive, connection."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.config import Settings
from app.main import create_app
from app.security import agent_token
from tests.conftest import (
    ADMIN,
    TEST_SECRET_KEY,
    TEST_TURN_SECRET,
    bearer,
    client_for,
    running,
)

PROBLEM = "application/problem+json"
MakeSession = Callable[..., Awaitable[dict[str, Any]]]
MakeTemplate = Callable[..., Awaitable[dict[str, Any]]]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def test_create_is_accepted_pending_with_location(
    client: httpx.AsyncClient, make_template: MakeTemplate
) -> None:
    await make_template("gpu-desktop", idle_timeout_s=600, max_lifetime_s=7200)
    response = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "gpu-desktop"}, headers=ADMIN
    )
    assert response.status_code == 202
    session = response.json()
    assert response.headers["location"] == f"/v1/sessions/{session['id']}"
    assert session["phase"] == "Pending"
    assert session["gpu"] == 1
    assert session["url"] == "https://alice.vdi.test.example/"
    assert {c["type"] for c in session["conditions"]} == {
        "PodScheduled",
        "GPUAvailable",
        "EncoderReady",
        "StreamHealthy",
        "LatencyWithinSLO",
    }
    assert all(c["status"] == "Unknown" for c in session["conditions"])
    created = ts(session["created_at"])
    assert ts(session["idle_deadline"]) - created == timedelta(seconds=600)
    assert ts(session["expires_at"]) - created == timedelta(seconds=7200)
    assert "password" not in response.text.lower()
    fetched = await client.get(response.headers["location"], headers=ADMIN)
    assert fetched.json() == session


@pytest.mark.parametrize(
    "user",
    [
        "Alice",
        "al_ice",
        "-alice",
        "alice-",
        "a" * 64,
        "",
        "al ice",
        "ålice",
        "alice.example",
        "../x",
    ],
)
async def test_a_user_that_is_not_a_dns_label_is_422(
    client: httpx.AsyncClient, make_template: MakeTemplate, user: str
) -> None:
    await make_template()
    response = await client.post(
        "/v1/sessions", json={"user": user, "template": "gpu-desktop"}, headers=ADMIN
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    error = response.json()["errors"][0]
    assert error["field"] == "user"
    assert (await client.get("/v1/sessions", headers=ADMIN)).json()["items"] == []


async def test_an_unknown_template_is_422_on_the_template_field(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "nope"}, headers=ADMIN
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "template"
    assert "PUT /v1/templates/nope" in response.json()["detail"]


async def test_one_live_session_per_user_names_the_live_one(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    first = await make_session("alice")
    second = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "gpu-desktop"}, headers=ADMIN
    )
    assert second.status_code == 409
    assert second.json()["live_session_ids"] == [first["id"]]
    assert first["id"] in second.json()["detail"]
    # another user is not affected; after a delete the user may start again
    await make_session("bob")
    await client.delete(f"/v1/sessions/{first['id']}", headers=ADMIN)
    again = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "gpu-desktop"}, headers=ADMIN
    )
    assert again.status_code == 202


async def test_concurrent_creates_for_one_user_exactly_one_wins(
    app: FastAPI, make_template: MakeTemplate
) -> None:
    await make_template()

    async def create() -> int:
        async with client_for(app) as http:
            response = await http.post(
                "/v1/sessions", json={"user": "carol", "template": "gpu-desktop"}, headers=ADMIN
            )
            return response.status_code

    statuses = await asyncio.gather(*(create() for _ in range(12)))
    assert sorted(statuses) == [202] + [409] * 11
    async with client_for(app) as http:
        listing = await http.get("/v1/sessions", params={"user": "carol"}, headers=ADMIN)
    assert len(listing.json()["items"]) == 1


async def test_idempotency_key_replays_the_first_result(
    client: httpx.AsyncClient, make_template: MakeTemplate
) -> None:
    await make_template()
    body = {"user": "dave", "template": "gpu-desktop"}
    first = await client.post(
        "/v1/sessions", json=body, headers={**ADMIN, "Idempotency-Key": "k-1"}
    )
    second = await client.post(
        "/v1/sessions", json=body, headers={**ADMIN, "Idempotency-Key": "k-1"}
    )
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json()
    assert second.headers["location"] == first.headers["location"]
    assert second.headers["idempotent-replayed"] == "true"
    assert len((await client.get("/v1/sessions", headers=ADMIN)).json()["items"]) == 1

    other = await client.post(
        "/v1/sessions",
        json={"user": "erin", "template": "gpu-desktop"},
        headers={**ADMIN, "Idempotency-Key": "k-1"},
    )
    assert other.status_code == 422
    assert other.json()["title"] == "Idempotency key reused"
    assert len((await client.get("/v1/sessions", headers=ADMIN)).json()["items"]) == 1


async def test_concurrent_retries_with_one_key_create_one_session(
    app: FastAPI, make_template: MakeTemplate
) -> None:
    await make_template()

    async def create() -> httpx.Response:
        async with client_for(app) as http:
            return await http.post(
                "/v1/sessions",
                json={"user": "frank", "template": "gpu-desktop"},
                headers={**ADMIN, "Idempotency-Key": "same"},
            )

    responses = await asyncio.gather(*(create() for _ in range(8)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["id"] for r in responses}) == 1


async def test_a_refused_create_does_not_burn_its_idempotency_key(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    existing = await make_session("gina")
    headers = {**ADMIN, "Idempotency-Key": "retry-me"}
    body = {"user": "gina", "template": "gpu-desktop"}
    assert (await client.post("/v1/sessions", json=body, headers=headers)).status_code == 409
    await client.delete(f"/v1/sessions/{existing['id']}", headers=ADMIN)
    assert (await client.post("/v1/sessions", json=body, headers=headers)).status_code == 202


async def test_list_filters_and_keyset_pagination(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: Callable[..., Awaitable[None]]
) -> None:
    users = [f"user-{i}" for i in range(7)]
    made = [
        await make_session(user, "gpu-desktop" if i % 2 else "cpu-desktop", gpu=i % 2)
        for i, user in enumerate(users)
    ]
    await set_phase(made[0]["id"], "Provisioning", "Starting", "Running")

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/sessions", params=params, headers=ADMIN)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [s["id"] for s in reversed(made)]  # newest first, each once

    by_user = (await client.get("/v1/sessions", params={"user": "user-3"}, headers=ADMIN)).json()[
        "items"
    ]
    assert [s["user"] for s in by_user] == ["user-3"]
    running = (await client.get("/v1/sessions", params={"phase": "Running"}, headers=ADMIN)).json()[
        "items"
    ]
    assert [s["id"] for s in running] == [made[0]["id"]]
    cpu = (
        await client.get("/v1/sessions", params={"template": "cpu-desktop"}, headers=ADMIN)
    ).json()["items"]
    assert len(cpu) == 4
    assert {s["gpu"] for s in cpu} == {0}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"phase": "Sleeping"}, "phase"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"user": "Not_A_Label"}, "user"),
    ],
)
async def test_bad_list_parameters_are_422(
    client: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    response = await client.get("/v1/sessions", params=params, headers=ADMIN)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field
    assert response.json()["errors"][0]["location"] == "query"


async def test_unknown_session_is_404_problem(client: httpx.AsyncClient) -> None:
    sid = "11111111-1111-4111-8111-111111111111"
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/keepalive"),
        ("GET", "/connection"),
        ("GET", "/events"),
    ]:
        response = await client.request(method, f"/v1/sessions/{sid}{path}", headers=ADMIN)
        assert response.status_code == 404, (method, path)
        assert response.json()["title"] == "Session not found"
    malformed = await client.get("/v1/sessions/not-a-uuid", headers=ADMIN)
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["field"] == "session_id"


async def test_delete_goes_terminating_and_again_is_not_an_error(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    session = await make_session()
    first = await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert first.status_code == 202
    assert first.json()["phase"] == "Terminating"
    assert first.json()["ended_at"] is not None
    second = await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    assert second.status_code == 202
    assert second.json() == first.json()


async def test_keepalive_pushes_the_idle_deadline(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    session = await make_session(idle_timeout_s=900)
    await asyncio.sleep(0.01)
    response = await client.post(f"/v1/sessions/{session['id']}/keepalive", headers=ADMIN)
    assert response.status_code == 200
    pushed = response.json()
    assert ts(pushed["idle_deadline"]) > ts(session["idle_deadline"])
    assert ts(pushed["idle_deadline"]) - ts(pushed["updated_at"]) == timedelta(seconds=900)

    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    refused = await client.post(f"/v1/sessions/{session['id']}/keepalive", headers=ADMIN)
    assert refused.status_code == 409
    assert refused.json()["title"] == "Session has ended"


async def test_connection_gives_credentials_and_browser_ice_servers(
    client: httpx.AsyncClient,
    make_session: MakeSession,
    make_token: Callable[..., Awaitable[dict[str, str]]],
) -> None:
    session = await make_session(max_lifetime_s=3600, idle_timeout_s=600)
    connect = await make_token("sessions:connect")
    response = await client.get(f"/v1/sessions/{session['id']}/connection", headers=connect)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["url"] == session["url"]
    assert body["username"] == "user"
    assert len(body["password"]) >= 16
    stun, turn = body["ice_servers"]
    assert stun == {"urls": ["stun:turn.test.example:3478"], "username": None, "credential": None}
    assert turn["urls"] == ["turn:turn.test.example:3478?transport=udp"]
    expiry, session_id = turn["username"].split(":")
    assert session_id == session["id"]
    # short-lived (VDI_TURN_CREDENTIAL_TTL_S, 900 s by default), not the session's lifetime
    now = datetime.now(UTC).timestamp()
    assert now + 900 - 5 <= int(expiry) <= now + 900 + 5
    expected = base64.b64encode(
        hmac.new(TEST_TURN_SECRET.encode(), turn["username"].encode(), hashlib.sha1).digest()
    ).decode()
    assert turn["credential"] == expected

    # stable across reads, unique per session
    again = (await client.get(f"/v1/sessions/{session['id']}/connection", headers=connect)).json()
    assert again["password"] == body["password"]
    other = await make_session("zoe")
    other_password = (
        await client.get(f"/v1/sessions/{other['id']}/connection", headers=connect)
    ).json()["password"]
    assert other_password != body["password"]
    # the secret is stored encrypted, never in the clear
    assert (
        body["password"]
        not in (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).text
    )


async def test_connection_of_an_ended_session_is_409(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    session = await make_session()
    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    response = await client.get(f"/v1/sessions/{session['id']}/connection", headers=ADMIN)
    assert response.status_code == 409


async def test_the_agent_renews_turn_credentials_only_while_the_session_lives(
    client: httpx.AsyncClient, make_session: MakeSession, settings: Settings
) -> None:
    session = await make_session()
    agent = bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(session["id"])))
    path = f"/v1/sessions/{session['id']}/turn"
    response = await client.get(path, headers=agent)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["ttl_s"] == settings.turn_credential_ttl_s
    expiry, session_id = body["username"].split(":")
    assert session_id == session["id"]
    assert int(expiry) == int(ts(body["expires_at"]).timestamp())
    assert abs(int(expiry) - datetime.now(UTC).timestamp() - body["ttl_s"]) < 5
    assert (
        body["password"]
        == base64.b64encode(
            hmac.new(TEST_TURN_SECRET.encode(), body["username"].encode(), hashlib.sha1).digest()
        ).decode()
    )
    assert body["ice_servers"][1]["username"] == body["username"]

    # only that session's agent: not another session's token, not an API token
    other = await make_session("zoe")
    other_agent = bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(other["id"])))
    assert (await client.get(path, headers=other_agent)).status_code == 403
    assert (await client.get(path, headers=ADMIN)).status_code == 403
    assert (await client.get(path)).status_code == 401

    # ended: no more credentials, so the last ones stop working within their short lifetime
    await client.delete(f"/v1/sessions/{session['id']}", headers=ADMIN)
    ended = await client.get(path, headers=agent)
    assert ended.status_code == 409
    assert ended.json()["title"] == "Session has ended"


@pytest.mark.parametrize(
    ("user", "said"),
    [
        ("xn--80ak6aa92e", "IDNA (Punycode)"),
        ("ab--cd", "IDNA (Punycode)"),
        ("turn", "reserved"),
        ("api", "reserved"),
        ("traefik", "reserved"),
    ],
)
async def test_punycode_and_the_platforms_own_host_names_are_not_user_names(
    client: httpx.AsyncClient,
    make_template: Callable[..., Awaitable[dict[str, Any]]],
    user: str,
    said: str,
) -> None:
    await make_template()
    response = await client.post(
        "/v1/sessions", json={"user": user, "template": "gpu-desktop"}, headers=ADMIN
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert said in body["detail"]
    assert body["errors"][0]["field"] == "user"
    listed = (await client.get("/v1/sessions", params={"user": user}, headers=ADMIN)).json()
    assert listed["items"] == []


def test_the_turn_and_callback_hosts_are_reserved_too(settings: Settings) -> None:
    custom = settings.model_copy(
        update={
            "base_domain": "desk.example.com",
            "turn_host": "relay.desk.example.com",
            "callback_url": "http://control.desk.example.com:8080",
            "reserved_user_names": "api",
        }
    )
    assert {"api", "relay", "control"} <= custom.reserved_users


async def test_a_listing_survives_its_pooled_connection_being_closed_under_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_template: Callable[..., Awaitable[dict[str, Any]]],
    make_session: Callable[..., Awaitable[dict[str, Any]]],
) -> None:
    """Listings run on the direct asyncpg pool, whose idle connections a restarted database
    leaves dead: the listing is read again on a fresh connection, not answered 500 or 503."""
    await make_template()
    session = await make_session()
    first = await client.get("/v1/sessions", headers=ADMIN)
    assert [item["id"] for item in first.json()["items"]] == [session["id"]]
    pool = app.state.direct_pool
    async with pool.acquire() as connection:
        backends = {await connection.fetchval("SELECT pg_backend_pid()")}
    async with app.state.engine.connect() as killer:  # as a restart would
        for pid in backends:
            # With a timeout it returns once the backend has exited (without one it only
            # signals it, and the next query could race the backend's own exit).
            await killer.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})
    again = await client.get("/v1/sessions", headers=ADMIN)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()


async def test_turn_credentials_are_rate_limited_per_session(
    settings: Settings, database_url: str, make_session: MakeSession
) -> None:
    """Finding 27.12: one agent token minted about 200 credentials a second."""
    limited = create_app(settings.model_copy(update={"turn_rate_limit": "3/minute"}), database_url)
    session, other = await make_session(), await make_session("zoe")
    async with running(limited), client_for(limited) as http:
        agent = bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(session["id"])))
        path = f"/v1/sessions/{session['id']}/turn"
        answers = [(await http.get(path, headers=agent)).status_code for _ in range(5)]
        assert answers == [200, 200, 200, 429, 429]
        refused = await http.get(path, headers=agent)
        assert int(refused.headers["retry-after"]) >= 1
        assert "VDI_TURN_RATE_LIMIT" in refused.json()["detail"]
        # another session's agent is not held back
        other_agent = bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(other["id"])))
        assert (
            await http.get(f"/v1/sessions/{other['id']}/turn", headers=other_agent)
        ).status_code == 200


def test_several_turn_hosts_give_each_session_one_for_viewers_and_selkies(
    settings: Settings,
) -> None:
    from app.cluster import manifests
    from app.sessions.service import ice_servers
    from app.templates.schemas import TemplateSpec

    domain = settings.base_domain
    hosts = [f"turn-{n}.{domain}" for n in range(3)]
    sharded = settings.model_copy(update={"turn_hosts": f"{hosts[0]}, {hosts[1]},{hosts[2]}"})
    used = set()
    for _ in range(60):
        sid = uuid.uuid4()
        host = sharded.turn_host_for(sid)
        used.add(host)
        servers = ice_servers(sharded, sid, "u", "p")
        assert servers[1].urls == [f"turn:{host}:3478?transport=udp"]
        view = manifests.SessionView(sid, "alice", "t", TemplateSpec(image="registry.test/i:1"))
        env = {
            e["name"]: e.get("value")
            for e in manifests.pod(view, sharded)["spec"]["containers"][0]["env"]
        }
        assert env["SELKIES_TURN_HOST"] == host
    assert used == set(hosts)
    assert {"turn-0", "turn-1", "turn-2"} <= sharded.reserved_users
