"""Tokens and scopes: every endpoint refuses no token, a revoked token and each wrong scope."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.auth.schemas import Scope
from tests.conftest import ADMIN, bearer

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
