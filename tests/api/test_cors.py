"""CORS: off by default; VDI_CORS_ORIGINS lets named origins call /v1 from a browser, never the
agents' callbacks, never with credentials or a wildcard."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN, _truncate, client_for, running

PORTAL = "https://portal.example.com"
PREFLIGHT = {
    "Origin": PORTAL,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
}


@pytest.fixture
async def cors_client(settings: Settings, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"cors_origins": PORTAL}), database_url)
    try:
        async with running(app), client_for(app) as http:
            yield http
    finally:
        await _truncate(database_url)


async def test_without_origins_no_cors_header_is_sent(client: httpx.AsyncClient) -> None:
    answer = await client.options("/v1/sessions", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in answer.headers
    listed = await client.get("/v1/sessions", headers={**ADMIN, "Origin": PORTAL})
    assert listed.status_code == 200
    assert "access-control-allow-origin" not in listed.headers


async def test_a_named_origin_gets_its_preflight_and_the_headers_it_needs(
    cors_client: httpx.AsyncClient,
) -> None:
    answer = await cors_client.options("/v1/sessions", headers=PREFLIGHT)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == PORTAL
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert {"authorization", "idempotency-key", "last-event-id"} <= {
        h.strip() for h in allowed.split(",")
    }
    assert "access-control-allow-credentials" not in answer.headers
    listed = await cors_client.get("/v1/sessions", headers={**ADMIN, "Origin": PORTAL})
    assert listed.headers["access-control-allow-origin"] == PORTAL
    exposed = listed.headers["access-control-expose-headers"].lower()
    assert {"location", "idempotent-replayed", "retry-after", "x-request-id"} <= {
        h.strip() for h in exposed.split(",")
    }


async def test_another_origin_and_the_agent_callbacks_get_no_cors(
    cors_client: httpx.AsyncClient,
) -> None:
    other = await cors_client.options(
        "/v1/sessions", headers={**PREFLIGHT, "Origin": "https://evil.example.net"}
    )
    assert "access-control-allow-origin" not in other.headers
    for path in ("/v1/sessions/6f1c0000-0000-4000-8000-000000000000/health", "/metrics"):
        answer = await cors_client.options(path, headers=PREFLIGHT)
        assert "access-control-allow-origin" not in answer.headers, path


@pytest.mark.parametrize("value", ["*", "https://*.example.com", "portal.example.com"])
def test_a_wildcard_or_a_bare_host_is_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=value)
