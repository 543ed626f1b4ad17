"""Tokens and scopes: every endpoint refuses no token, a revoked token and each wrong scope."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from app.auth.schemas import Scope
from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN, TEST_BOOTSTRAP_TOKEN, bearer, client_for, running

PROBLEM = "application/problem+json"
SID = "00000000-0000-4000-8000-000000000000"

# (method, path, body, scope needed); the session and template named may not exist:
# authorization is decided before the lookup, so the answer is never 404 here.
ENDPOINTS: list[tuple[str, str, Any, Scope]] = [
    ("POST", "/v1/tokens", {"name": "x", "scopes": ["sessions:read"]}, Scope.admin),
    ("GET", "/v1/tokens", None, Scope.admin),
    ("DELETE", f"/v1/tokens/{SID}", None, Scope.admin),
    ("PUT", "/v1/templates/t1", {"image": "i"}, Scope.templates_write),
    ("GET", "/v1/templates", None, Scope.sessions_read),
    ("GET", "/v1/templates/t1", None, Scope.sessions_read),
    ("DELETE", "/v1/templates/t1", None, Scope.templates_write),
    ("POST", "/v1/sessions", {"user": "bob", "template": "t1"}, Scope.sessions_write),
    ("GET", "/v1/sessions", None, Scope.sessions_read),
    ("GET", f"/v1/sessions/{SID}", None, Scope.sessions_read),
    ("DELETE", f"/v1/sessions/{SID}", None, Scope.sessions_write),
    ("POST", f"/v1/sessions/{SID}/keepalive", None, Scope.sessions_write),
    ("GET", f"/v1/sessions/{SID}/connection", None, Scope.sessions_connect),
    ("GET", f"/v1/sessions/{SID}/events", None, Scope.sessions_read),
]


def _ids(item: tuple[str, str, Any, Scope]) -> str:
    return f"{item[0]} {item[1]}"


async def _call(
    client: httpx.AsyncClient, endpoint: tuple[str, str, Any, Scope], headers: dict[str, str]
) -> httpx.Response:
    method, path, body, _ = endpoint
    return await client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
async def test_no_token_is_401_problem(
    client: httpx.AsyncClient, endpoint: tuple[str, str, Any, Scope]
) -> None:
    response = await _call(client, endpoint, {})
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
async def test_unknown_token_is_401(
    client: httpx.AsyncClient, endpoint: tuple[str, str, Any, Scope]
) -> None:
    response = await _call(client, endpoint, bearer("vdi_not-a-real-token"))
    assert response.status_code == 401
    assert "unknown or revoked" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_ids)
async def test_each_wrong_scope_is_403_and_the_right_one_passes(
    client: httpx.AsyncClient,
    make_token: Callable[..., Awaitable[dict[str, str]]],
    endpoint: tuple[str, str, Any, Scope],
) -> None:
    needed = endpoint[3]
    for scope in Scope:
        if scope in (needed, Scope.admin):
            continue
        response = await _call(client, endpoint, await make_token(scope.value))
        assert response.status_code == 403, (scope, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert f"`{needed.value}`" in response.json()["detail"]
    response = await _call(client, endpoint, await make_token(needed.value))
    assert response.status_code not in (401, 403), response.text


async def test_a_revoked_token_stops_working_at_once(
    client: httpx.AsyncClient, make_token: Callable[..., Awaitable[dict[str, str]]]
) -> None:
    created = await client.post(
        "/v1/tokens", json={"name": "portal", "scopes": ["sessions:read"]}, headers=ADMIN
    )
    token = created.json()
    assert (await client.get("/v1/sessions", headers=bearer(token["token"]))).status_code == 200
    assert (await client.delete(f"/v1/tokens/{token['id']}", headers=ADMIN)).status_code == 204
    assert (await client.delete(f"/v1/tokens/{token['id']}", headers=ADMIN)).status_code == 204
    response = await client.get("/v1/sessions", headers=bearer(token["token"]))
    assert response.status_code == 401


async def test_token_list_never_shows_the_token(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/v1/tokens",
        json={"name": "portal", "scopes": ["sessions:write", "sessions:read"]},
        headers=ADMIN,
    )
    assert created.status_code == 201
    body = created.json()
    assert body["token"].startswith("vdi_")
    assert body["scopes"] == [
        "sessions:read",
        "sessions:write",
    ]
    listing = await client.get("/v1/tokens", headers=ADMIN)
    assert body["token"] not in listing.text
    names = [item["name"] for item in listing.json()["items"]]
    assert names == ["bootstrap", "portal"]
    revoked = await client.delete(f"/v1/tokens/{uuid.uuid4()}", headers=ADMIN)
    assert revoked.status_code == 404
    assert revoked.json()["title"] == "Token not found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["admin"]}, "name"),
        ({"scopes": ["admin"]}, "name"),
        ({"name": "x", "scopes": ["admin"], "extra": 1}, "extra"),
    ],
)
async def test_bad_token_requests_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/tokens", json=body, headers=ADMIN)
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert field in [error["field"] for error in response.json()["errors"]]


async def test_admin_scope_implies_every_other(
    client: httpx.AsyncClient, make_token: Callable[..., Awaitable[dict[str, str]]]
) -> None:
    admin = await make_token("admin")
    assert (
        await client.put("/v1/templates/t2", json={"image": "i"}, headers=admin)
    ).status_code == 201
    assert (await client.get("/v1/sessions", headers=admin)).status_code == 200


async def test_rotating_the_bootstrap_token_revokes_the_old_value_and_unsetting_revokes_all(
    app: FastAPI, settings: Settings, database_url: str
) -> None:
    """The `app` fixture started with TEST_BOOTSTRAP_TOKEN; restarts with another value, then
    with none, on the same database (as replicas restarted with a new Secret)."""
    new_value = "rotated-bootstrap-" + "r" * 40

    async def status(application: FastAPI, token: str) -> int:
        async with client_for(application) as http:
            return (await http.get("/v1/tokens", headers=bearer(token))).status_code

    assert await status(app, TEST_BOOTSTRAP_TOKEN) == 200
    first = settings.model_copy(update={"bootstrap_generation": 1})
    async with running(create_app(first, database_url)) as generation_1:
        assert await status(generation_1, TEST_BOOTSTRAP_TOKEN) == 200
    rotated = create_app(
        settings.model_copy(
            update={"bootstrap_token": SecretStr(new_value), "bootstrap_generation": 2}
        ),
        database_url,
    )
    async with running(rotated):
        assert await status(rotated, new_value) == 200
        assert await status(rotated, TEST_BOOTSTRAP_TOKEN) == 401  # the old value is revoked
    # A replica still on the old value (a rolling update's old pod) does not undo the rotation.
    async with running(create_app(first, database_url)) as stale:
        assert await status(stale, new_value) == 200
        assert await status(stale, TEST_BOOTSTRAP_TOKEN) == 401
    unset = create_app(settings.model_copy(update={"bootstrap_token": None}), database_url)
    async with running(unset):
        assert await status(unset, new_value) == 401  # unset means none
        assert await status(unset, TEST_BOOTSTRAP_TOKEN) == 401


async def test_a_token_revoked_on_one_replica_stops_working_on_another_that_cached_it(
    app: FastAPI, client: httpx.AsyncClient, settings: Settings, database_url: str
) -> None:
    """Token lookups are cached for a few seconds, but a revocation notice clears every
    replica's cache: the revoked token fails on the other replica within the notice's delay."""
    created = await client.post(
        "/v1/tokens", json={"name": "portal", "scopes": ["sessions:read"]}, headers=ADMIN
    )
    token = bearer(created.json()["token"])
    async with running(create_app(settings, database_url)) as other, client_for(other) as http:
        assert (await http.get("/v1/sessions", headers=token)).status_code == 200  # cached
        assert (await http.get("/v1/sessions", headers=token)).status_code == 200
        revoked = await client.delete(f"/v1/tokens/{created.json()['id']}", headers=ADMIN)
        assert revoked.status_code == 204
        for _ in range(40):  # the notice travels through Postgres
            if (await http.get("/v1/sessions", headers=token)).status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert (await http.get("/v1/sessions", headers=token)).status_code == 401
    assert (await client.get("/v1/sessions", headers=token)).status_code == 401  # here at once


@pytest.mark.parametrize("generations", [(None, None, None), (3, 4, 5)])
async def test_a_bootstrap_value_that_comes_back_works_again_and_the_one_between_is_revoked(
    app: FastAPI, settings: Settings, database_url: str, generations: tuple[int | None, ...]
) -> None:
    """Finding 27.17: after T1 -> T2 -> T1 (a helm rollback, or the old Secret restored after
    T2 leaked), T2 stayed a valid admin token and T1 did not work."""
    t1, t2 = TEST_BOOTSTRAP_TOKEN, "second-bootstrap-" + "s" * 40

    async def status(application: FastAPI, token: str) -> int:
        async with client_for(application) as http:
            return (await http.get("/v1/tokens", headers=bearer(token))).status_code

    def configured(value: str, generation: int | None) -> FastAPI:
        update = {"bootstrap_token": SecretStr(value), "bootstrap_generation": generation}
        return create_app(settings.model_copy(update=update), database_url)

    g1, g2, g3 = generations
    async with running(configured(t1, g1)) as one:
        assert await status(one, t1) == 200
    async with running(configured(t2, g2)) as two:
        assert (await status(two, t2), await status(two, t1)) == (200, 401)
    async with running(configured(t1, g3)) as back:
        assert await status(back, t1) == 200  # valid again
        assert await status(back, t2) == 401  # the value in between is revoked
        # an admin's revocation sticks, even when the value returns later
        async with client_for(back) as http:
            listed = (await http.get("/v1/tokens", headers=bearer(t1))).json()["items"]
            [current] = [t for t in listed if t["name"] == "bootstrap" and t["revoked_at"] is None]
            deleted = await http.delete(f"/v1/tokens/{current['id']}", headers=bearer(t1))
            assert deleted.status_code == 204
    later = None if g3 is None else g3 + 1
    async with running(configured(t1, later)) as again:
        assert await status(again, t1) == 401
