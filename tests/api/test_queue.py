"""The reconciler's work queue is served fairly: one template's rush does not starve another's
sessions, and work on existing sessions is not queued behind new ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
from fastapi import FastAPI

from app.models._types import utcnow
from app.sessions.repository import workqueue
from tests.conftest import ADMIN

MakeTemplate = Callable[..., Awaitable[dict[str, Any]]]


async def _create(client: httpx.AsyncClient, user: str, template: str) -> str:
    response = await client.post(
        "/v1/sessions", json={"user": user, "template": template}, headers=ADMIN
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_a_template_rush_does_not_starve_another_template(
    client: httpx.AsyncClient, app: FastAPI, make_template: MakeTemplate
) -> None:
    await make_template("rush")
    await make_template("quiet")
    rush = [await _create(client, f"r{i}", "rush") for i in range(12)]
    quiet = [await _create(client, f"q{i}", "quiet") for i in range(2)]  # queued after the rush
    async with app.state.sessionmaker() as db, db.begin():
        claimed = await workqueue.claim_due(db, now=utcnow() + timedelta(seconds=1), limit=4)
        ids = [str(s.id) for s in claimed]
    # the two templates take turns: both quiet sessions are among the first four served,
    # and the rush's oldest two come with them
    assert set(quiet) <= set(ids)
    assert set(rush[:2]) <= set(ids)
    assert len(ids) == 4


async def test_work_on_existing_sessions_goes_before_a_queue_of_new_ones(
    client: httpx.AsyncClient, app: FastAPI, make_template: MakeTemplate
) -> None:
    """A deletion (or a deadline) is not queued behind a rush of creates."""
    await make_template("desk")
    rush = [await _create(client, f"u{i}", "desk") for i in range(6)]
    leaving = rush[3]
    response = await client.delete(f"/v1/sessions/{leaving}", headers=ADMIN)
    assert response.status_code == 202
    async with app.state.sessionmaker() as db, db.begin():
        claimed = await workqueue.claim_due(db, now=utcnow() + timedelta(seconds=1), limit=2)
        ids = [str(s.id) for s in claimed]
    assert ids == [leaving, rush[0]]
