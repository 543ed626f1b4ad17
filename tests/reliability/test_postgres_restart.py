"""Postgres restarted under load: 100 portals creating sessions (with Idempotency-Keys) and
their agents reporting, while the database stops and starts again. Every request answers either
success or a retryable 503 with Retry-After, the service recovers by itself, and every
acknowledged session exists exactly once."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from app.embedded import EmbeddedPostgres, ensure_database
from app.security import agent_token
from harness.plane import READY_REPORT
from tests.reliability.service import service

pytestmark = pytest.mark.e2e

PORTALS = 100
REPORTS_PER_SESSION = 3


class Load:
    def __init__(self, url: str, admin: dict[str, str], secret_key: str) -> None:
        self.url = url
        self.admin = admin
        self.secret_key = secret_key
        self.statuses: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.acknowledged: dict[str, str] = {}  # user -> session id the service answered
        self.quarter_acknowledged = asyncio.Event()

    def _record(self, what: str, response: httpx.Response, ok: set[int]) -> bool:
        self.statuses[f"{what} {response.status_code}"] += 1
        if response.status_code in ok:
            return True
        if (
            what == "health"
            and response.status_code == 409
            and response.json()["type"].endswith(":session-not-started")
        ):
            return False  # reported before the reconciler recorded Starting: retried, as agents do
        if response.status_code == 503 and response.headers.get("retry-after", "").isdigit():
            if response.headers["content-type"] != "application/problem+json":
                self.unexpected.append(f"{what}: 503 without problem+json")
            return False
        self.unexpected.append(f"{what}: {response.status_code} {response.text[:200]}")
        return False

    async def portal(self, http: httpx.AsyncClient, index: int) -> None:
        user, key = f"load-{index}", str(uuid.uuid4())
        body = {"user": user, "template": "cpu"}
        headers = {**self.admin, "Idempotency-Key": key}
        for _ in range(200):
            response = await http.post("/v1/sessions", json=body, headers=headers)
            if self._record("create", response, {202}):
                self.acknowledged[user] = response.json()["id"]
                if len(self.acknowledged) >= PORTALS // 4:
                    self.quarter_acknowledged.set()
                break
            await asyncio.sleep(0.2)
        else:
            self.unexpected.append(f"create for {user} never succeeded")
            return
        session_id = self.acknowledged[user]
        token = agent_token(self.secret_key, uuid.UUID(session_id))
        for _ in range(REPORTS_PER_SESSION):
            for _ in range(200):
                response = await http.post(
                    f"/v1/sessions/{session_id}/health",
                    json=READY_REPORT,
                    headers={"Authorization": f"Bearer {token}"},
                )
                if self._record("health", response, {200}):
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.05)


async def test_postgres_restart_mid_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    pgdata = tmp_path / "pg"
    postgres = EmbeddedPostgres(pgdata)
    try:
        await ensure_database(postgres.url(), "vdi")
        database_url = postgres.url("vdi")
        secret_key = secrets.token_urlsafe(48)
        with service(
            tmp_path,
            VDI_DATABASE_URL=database_url,
            VDI_AUTO_MIGRATE="true",
            VDI_SECRET_KEY=secret_key,
            VDI_TURN_SECRET=secrets.token_urlsafe(48),
            VDI_LOG_LEVEL="WARNING",
            VDI_RECONCILE_INTERVAL_S="0.2",
            # This load retries every 0.2 s through the outage, far faster than an agent does:
            # the per-session report limit is not what this test is about.
            VDI_REPORT_RATE_LIMIT="1000/minute",
        ) as svc:
            async with httpx.AsyncClient(base_url=svc.url, timeout=30) as http:
                template = {"image": "vdi/session:1", "gpu": 0}
                assert (
                    await http.put("/v1/templates/cpu", json=template, headers=svc.admin)
                ).is_success
                load = Load(svc.url, svc.admin, secret_key)
                portals = [asyncio.create_task(load.portal(http, i)) for i in range(PORTALS)]
                await load.quarter_acknowledged.wait()  # restart mid-way
                acknowledged_before = len(load.acknowledged)
                await asyncio.to_thread(postgres.stop)
                await asyncio.sleep(1.0)  # down long enough for requests to meet it down
                postgres = await asyncio.to_thread(EmbeddedPostgres, pgdata)
                await asyncio.wait_for(asyncio.gather(*portals), timeout=180)

                assert load.unexpected == [], _errors(svc.log.read_text())
                assert acknowledged_before < PORTALS
                assert load.statuses["create 503"] + load.statuses["health 503"] > 0, (
                    "the restart was not seen by any request",
                    load.statuses,
                )
                assert len(load.acknowledged) == PORTALS
                # Recovered by itself: ready, and the reconciler and reports moved everything on.
                assert (await http.get("/readyz")).status_code == 200
                deadline = time.monotonic() + 90
                while True:
                    listing = await _all_sessions(http, svc.admin)
                    phases = Counter(s["phase"] for s in listing)
                    if phases.get("Running") == PORTALS or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
                assert phases == {"Running": PORTALS}, phases
                # Every acknowledged session exists exactly once, under the id acknowledged.
                by_user = Counter(s["user"] for s in listing)
                assert set(by_user.values()) == {1}
                assert {s["user"]: s["id"] for s in listing} == load.acknowledged
        rows = await _count_sessions(postgres.url("vdi"))
        assert rows == PORTALS
    finally:
        postgres.stop()


def _errors(log: str) -> str:
    """The log's unhandled errors (with their tracebacks), or its tail when there are none."""
    errors = [line for line in log.splitlines() if '"level": "error"' in line]
    return "\n".join(errors)[-12000:] or log[-6000:]


async def _all_sessions(http: httpx.AsyncClient, admin: dict[str, str]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = (await http.get("/v1/sessions", params=params, headers=admin)).json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return items


async def _count_sessions(url: str) -> int:
    connection = await asyncpg.connect(url)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM sessions"))
    finally:
        await connection.close()
