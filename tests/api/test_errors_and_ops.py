"""Problem bodies for every failure, the operational endpoints, and no secret in any output."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.observability import configure_logging
from app.security import agent_token
from app.sessions import events as events_module
from tests.conftest import (
    ADMIN,
    TEST_BOOTSTRAP_TOKEN,
    TEST_SECRET_KEY,
    TEST_TURN_SECRET,
    bearer,
    client_for,
    running,
)

PROBLEM = "application/problem+json"


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("DEBUG", json=True, stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])


async def test_unhandled_exception_is_a_500_problem_with_request_id(
    app: FastAPI, log_output: io.StringIO
) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"exploded while holding {TEST_TURN_SECRET}")

    async with client_for(app) as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["request_id"]
    assert response.headers["x-request-id"] == body["request_id"]
    assert "Traceback" not in response.text
    assert TEST_TURN_SECRET not in response.text
    assert "RuntimeError" not in response.text
    logged = log_output.getvalue()
    assert "Traceback" in logged
    assert body["request_id"] in logged


async def test_framework_errors_are_problems(client: httpx.AsyncClient) -> None:
    not_found = await client.get("/v2/nothing")
    assert not_found.status_code == 404
    assert not_found.headers["content-type"] == PROBLEM
    assert "/v1" in not_found.json()["detail"]
    wrong_method = await client.patch("/v1/sessions", headers=ADMIN)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["content-type"] == PROBLEM
    broken_json = await client.post(
        "/v1/sessions", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert broken_json.status_code == 422
    assert broken_json.headers["content-type"] == PROBLEM
    assert broken_json.json()["errors"][0]["type"] == "json_invalid"


async def test_oversize_body_is_413_and_stores_nothing(client: httpx.AsyncClient) -> None:
    big = {"image": "i", "node_selector": {f"k{i}": "v" * 60 for i in range(400)}}
    response = await client.put("/v1/templates/huge", json=big, headers=ADMIN)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROBLEM
    assert (await client.get("/v1/templates/huge", headers=ADMIN)).status_code == 404


async def test_healthz_readyz_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok", "checks": {}}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok"}
    await client.get("/v1/sessions", headers=ADMIN)
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert (
        'vdi_http_requests_total{method="GET",route="/v1/sessions",status="200"} 1.0'
        in metrics.text
    )
    assert 'vdi_sessions{phase="Pending"} 0.0' in metrics.text


async def test_readyz_is_503_when_the_database_is_gone(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(events_module, "CONNECT_WAIT_S", 0.1)
    gone = create_app(
        settings.model_copy(update={"bootstrap_token": None}),
        f"postgresql://postgres@/vdi?host={tmp_path}",
    )
    async with running(gone), client_for(gone) as http:
        response = await http.get("/readyz")
        assert (await http.get("/healthz")).status_code == 200
        request = await http.get("/v1/sessions", headers=ADMIN)
    assert request.status_code == 503
    assert request.headers["retry-after"] == "2"
    assert request.json()["title"] == "Service unavailable"
    assert response.status_code == 503
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["retry-after"] == "5"


async def test_no_secret_reaches_logs_errors_events_or_metrics(
    app: FastAPI,
    make_session: Callable[..., Awaitable[dict[str, Any]]],
    make_token: Callable[..., Awaitable[dict[str, str]]],
    log_output: io.StringIO,
) -> None:
    session = await make_session()
    created_token = (await make_token("sessions:connect"))["Authorization"].split()[1]
    agent = agent_token(TEST_SECRET_KEY, uuid.UUID(session["id"]))
    bodies: list[str] = []
    async with client_for(app) as http:
        connection = (
            await http.get(
                f"/v1/sessions/{session['id']}/connection", headers=bearer(created_token)
            )
        ).json()
        turn_password = connection["ice_servers"][1]["credential"]
        # failures of every kind, carrying secrets in the request
        for response in [
            await http.get("/v1/sessions", headers=bearer(connection["password"])),
            await http.post(
                f"/v1/sessions/{session['id']}/health", json={"checks": "x"}, headers=bearer(agent)
            ),
            await http.post(
                f"/v1/sessions/{uuid.uuid4()}/health", json={"checks": []}, headers=bearer(agent)
            ),
            await http.post(
                "/v1/tokens",
                json={"name": TEST_BOOTSTRAP_TOKEN * 3, "scopes": ["admin"]},
                headers=ADMIN,
            ),
            await http.post(
                "/v1/sessions", json={"user": turn_password, "template": "x"}, headers=ADMIN
            ),
        ]:
            assert response.status_code >= 400
            bodies.append(response.text)
        await http.post(
            f"/v1/sessions/{session['id']}/health",
            json={"checks": [{"name": "gpu", "ok": True}]},
            headers=bearer(agent),
        )
        bodies.append((await http.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).text)
        bodies.append((await http.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).text)
        bodies.append((await http.get("/metrics")).text)
    secrets = [
        TEST_SECRET_KEY,
        TEST_TURN_SECRET,
        TEST_BOOTSTRAP_TOKEN,
        created_token,
        agent,
        connection["password"],
        turn_password,
    ]
    logged = log_output.getvalue()
    assert "request" in logged  # the log did capture the traffic
    for secret in secrets:
        assert secret not in logged
        for body in bodies:
            assert secret not in body
