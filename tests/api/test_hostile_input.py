"""Hostile input: SQL and header injection in every string field and filter, text Postgres cannot
store, and names that are not DNS labels. Each gets a clear 4xx, and nothing already stored is
lost or changed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN

PROBLEM = "application/problem+json"
INJECTIONS = (
    "' OR '1'='1",
    "alice'; DROP TABLE sessions; --",
    '"; DELETE FROM templates; --',
    "1 UNION SELECT token_hash FROM api_tokens --",
    "%' OR 1=1 --",
    "$(reboot)",
    "../../etc/passwd",
    "alice\r\nSet-Cookie: stolen=1",
    "{{7*7}}",
)


async def _stored(client: httpx.AsyncClient) -> tuple[Any, Any, Any]:
    sessions = (await client.get("/v1/sessions", headers=ADMIN)).json()
    templates = (await client.get("/v1/templates", headers=ADMIN)).json()
    tokens = (await client.get("/v1/tokens", headers=ADMIN)).json()
    return sessions, templates, tokens


@pytest.fixture
async def stored(client: httpx.AsyncClient) -> tuple[Any, Any, Any]:
    template = {"image": "vdi/session:1", "gpu": 0}
    assert (await client.put("/v1/templates/base", json=template, headers=ADMIN)).is_success
    created = await client.post(
        "/v1/sessions", json={"user": "alice", "template": "base"}, headers=ADMIN
    )
    assert created.status_code == 202
    return await _stored(client)


def _json(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=True).encode()


def _assert_clear_refusal(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == PROBLEM
    assert "stolen" not in response.headers.get("set-cookie", "")
    body = response.json()
    assert body["detail"]


@pytest.mark.parametrize("payload", INJECTIONS)
async def test_injection_in_every_string_field_is_refused_and_changes_nothing(
    client: httpx.AsyncClient, stored: tuple[Any, Any, Any], payload: str
) -> None:
    segment = quote(payload, safe="")
    attempts: list[Callable[[], Awaitable[httpx.Response]]] = [
        lambda: client.post(
            "/v1/sessions", json={"user": payload, "template": "base"}, headers=ADMIN
        ),
        lambda: client.post(
            "/v1/sessions", json={"user": "bob", "template": payload}, headers=ADMIN
        ),
        lambda: client.put(
            "/v1/templates/x", json={"image": "i", "storage_class": payload}, headers=ADMIN
        ),
        lambda: client.put("/v1/templates/x", json={"image": "i", "cpu": payload}, headers=ADMIN),
        lambda: client.get("/v1/sessions", params={"phase": payload}, headers=ADMIN),
        lambda: client.get("/v1/sessions", params={"cursor": payload}, headers=ADMIN),
        lambda: client.get(f"/v1/sessions/{segment}", headers=ADMIN),
        lambda: client.delete(f"/v1/templates/{segment}", headers=ADMIN),
        lambda: client.post("/v1/tokens", json={"name": "n", "scopes": [payload]}, headers=ADMIN),
    ]
    for attempt in attempts:
        _assert_clear_refusal(await attempt())
    # Filters that accept free text answer normally and find nothing.
    for params in ({"user": payload}, {"template": payload}):
        response = await client.get("/v1/sessions", params=params, headers=ADMIN)
        assert response.status_code in (200, 422), response.text
        if response.status_code == 200:
            assert response.json()["items"] == []
    # A token name is free text: it is stored as given, as data, never as SQL.
    named = await client.post(
        "/v1/tokens", json={"name": payload, "scopes": ["sessions:read"]}, headers=ADMIN
    )
    assert named.status_code == 201
    assert named.json()["name"] == payload
    sessions, templates, tokens = await _stored(client)
    assert (sessions, templates) == stored[:2]
    assert len(tokens["items"]) == len(stored[2]["items"]) + 1


@pytest.mark.parametrize(
    "text", ["nul\u0000byte", "lone\ud800surrogate", "\udfff", "ok-prefix\u0000"]
)
async def test_unstorable_text_is_a_422_naming_the_field(
    client: httpx.AsyncClient, stored: tuple[Any, Any, Any], text: str
) -> None:
    # Sent as the escaped JSON a client would send ("\\ud800"): httpx cannot encode a lone
    # surrogate itself.
    response = await client.post(
        "/v1/tokens",
        content=_json({"name": text, "scopes": ["sessions:read"]}),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    (error,) = response.json()["errors"]
    assert (error["field"], error["location"]) == ("name", "body")
    assert "cannot be stored" in error["message"]
    nested = await client.put(
        "/v1/templates/base",
        content=_json({"image": "i", "node_selector": {"zone": text}}),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert nested.status_code == 422
    assert nested.json()["errors"][0]["field"] == "node_selector.zone"
    if "\x00" in text:  # a URL carries only UTF-8: a lone surrogate cannot reach the query
        query = await client.get("/v1/sessions", params={"user": text}, headers=ADMIN)
        assert query.status_code == 422
        assert query.json()["errors"][0]["location"] == "query"
    assert await _stored(client) == stored  # the template was not replaced, no token added


@pytest.mark.parametrize(
    "user", ["Alice", "alice_smith", "-alice", "alice-", "a" * 64, "al ice", "alice.example", ""]
)
async def test_user_names_that_are_not_dns_labels_are_refused(
    client: httpx.AsyncClient, stored: tuple[Any, Any, Any], user: str
) -> None:
    response = await client.post(
        "/v1/sessions", json={"user": user, "template": "base"}, headers=ADMIN
    )
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "user"
    assert any(hint in error["message"] for hint in ("DNS label", "at least", "at most 63"))
    assert await _stored(client) == stored


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
async def test_a_json_body_not_in_utf8_is_a_415_and_stores_nothing(
    client: httpx.AsyncClient, stored: tuple[Any, Any, Any], encoding: str
) -> None:
    """json.loads reads UTF-16/32 by itself, so a \\u0000 or deep nesting in them would pass a
    guard that scans the bytes as UTF-8: such bodies are refused before any parser."""
    text = '{"name": "nul\\u0000in utf-16", "scopes": ["sessions:read"]}'
    response = await client.post(
        "/v1/tokens",
        content=text.encode(encoding),
        headers={**ADMIN, "Content-Type": "application/json"},
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == PROBLEM
    assert "UTF-8" in response.json()["detail"]
    deep = ("[" * 40 + "]" * 40).encode(encoding)
    assert (
        await client.put(
            "/v1/templates/deep",
            content=deep,
            headers={**ADMIN, "Content-Type": "application/json"},
        )
    ).status_code == 415
    sessions, templates, tokens = await _stored(client)
    assert (sessions, templates, tokens) == stored
