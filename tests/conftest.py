"""Fixtures: one real Postgres per run (embedded, or VDI_TEST_DATABASE_URL), migrated once with
Alembic, tables emptied after each test; the app driven over httpx."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app import migrate
from app.config import Settings
from app.main import create_app

TEST_SECRET_KEY = "test-secret-key-" + "k" * 32
TEST_TURN_SECRET = "test-turn-secret-" + "t" * 32
TEST_BOOTSTRAP_TOKEN = "vdi_test-bootstrap-" + "b" * 32
TABLES = (
    "session_events",
    "session_shares",
    "audit_records",
    "idempotency_keys",
    "sessions",
    "templates",
    "api_tokens",
)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def _recreate_database(server_url: str, name: str) -> None:
    connection = await asyncpg.connect(
        make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A URL of a real Postgres server whose databases the tests may create and drop."""
    configured = os.environ.get("VDI_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from app.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(
        Path(tempfile.mkdtemp(prefix="vdi-test-pg-")) / "pg", delete_on_stop=True
    )
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def make_database(pg_server_url: str) -> Callable[[str], Awaitable[str]]:
    """Create an empty database (dropping any older one of that name); returns its URL."""

    async def _make(name: str) -> str:
        await _recreate_database(pg_server_url, name)
        return _with_database(pg_server_url, name)

    return _make


@pytest.fixture(scope="session")
async def database_url(make_database: Callable[[str], Awaitable[str]]) -> str:
    url = await make_database("vdi_test")
    await asyncio.to_thread(migrate.upgrade, url)
    return url


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path,
        secret_key=TEST_SECRET_KEY,
        turn_secret=TEST_TURN_SECRET,
        bootstrap_token=TEST_BOOTSTRAP_TOKEN,
        base_domain="vdi.test.example",
        turn_host="turn.test.example",
        max_body_bytes=16384,
        reconciler=False,  # the API tests move phases themselves; tests/cluster runs it
    )


async def _truncate(url: str) -> None:
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await connection.execute(f"TRUNCATE {', '.join(TABLES)} CASCADE")
    finally:
        await connection.close()


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def app(settings: Settings, database_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(settings, database_url)
    try:
        async with running(application):
            yield application
    finally:
        await _truncate(database_url)


def client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test"
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


ADMIN = bearer(TEST_BOOTSTRAP_TOKEN)


@pytest.fixture
def make_token(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, str]]]:
    """A token with exactly these scopes, as request headers."""

    async def _make(*scopes: str, name: str = "test") -> dict[str, str]:
        response = await client.post(
            "/v1/tokens", json={"name": name, "scopes": list(scopes)}, headers=ADMIN
        )
        assert response.status_code == 201, response.text
        return bearer(response.json()["token"])

    return _make


@pytest.fixture
def make_template(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def _make(name: str = "gpu-desktop", **fields: Any) -> dict[str, Any]:
        body = {"image": "registry.test/vdi/session:1", **fields}
        response = await client.put(f"/v1/templates/{name}", json=body, headers=ADMIN)
        assert response.status_code in (200, 201), response.text
        return dict(response.json())

    return _make


@pytest.fixture
def make_session(
    client: httpx.AsyncClient, make_template: Callable[..., Awaitable[dict[str, Any]]]
) -> Callable[..., Awaitable[dict[str, Any]]]:
    async def _make(
        user: str = "alice", template: str = "gpu-desktop", **template_fields: Any
    ) -> dict[str, Any]:
        await make_template(template, **template_fields)
        response = await client.post(
            "/v1/sessions", json={"user": user, "template": template}, headers=ADMIN
        )
        assert response.status_code == 202, response.text
        return dict(response.json())

    return _make


@pytest.fixture
def set_phase(app: FastAPI) -> Callable[..., Awaitable[None]]:
    """Move a session through the state machine as the reconciler will (the cluster side is
    the Kubernetes issue's): real transitions and events, in one transaction."""
    from app.models._types import utcnow
    from app.sessions import lifecycle
    from app.sessions.repository import api as repository
    from app.sessions.repository import eventlog
    from app.sessions.schemas import Phase

    # the reason the reconciler gives each phase (reasons are a closed set)
    reasons = {
        "Provisioning": "Provisioning",
        "Starting": "ObjectsCreated",
        "Running": "AgentReady",
        "Failed": "PodFailed",
        "Terminating": "DeleteRequested",
        "Terminated": "ObjectsDeleted",
    }

    async def _set(session_id: str, *phases: str) -> None:
        async with app.state.sessionmaker() as db, db.begin():
            session = await repository.get(db, uuid.UUID(session_id), for_update=True)
            assert session is not None
            now = utcnow()
            events = [
                lifecycle.transition(
                    session,
                    Phase(phase),
                    reason=reasons[phase],
                    message=f"test moved it to {phase}",
                    now=now,
                )
                for phase in phases
            ]
            await db.flush()
            await eventlog.add_events(db, session, events, now)

    return _set


def simulated_app(settings: Settings, database_url: str, port: int, **overrides: Any) -> FastAPI:
    """The app on the in-process simulated cluster, its stand-in agents reporting (every second)
    to it on `port`: sessions run, as they do under `vdi-control serve`."""
    return create_app(
        settings.model_copy(
            update={
                "cluster": "simulated",
                "callback_url": f"http://127.0.0.1:{port}",
                "reconciler": True,
                "reconcile_interval_s": 0.2,
                "heartbeat_timeout_s": 3,
                **overrides,
            }
        ),
        database_url,
    )
