"""Agent callbacks arriving late, duplicated, concurrently and out of order: the session's phase
only ever moves forward along the lifecycle, a stale report cannot revive an ended session or
undo a failure, and duplicates record nothing new."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from app.sessions.lifecycle import TRANSITIONS
from app.sessions.schemas import Phase
from tests.api.test_health import READY, report
from tests.conftest import ADMIN

MakeSession = Callable[..., Awaitable[dict[str, Any]]]
SetPhase = Callable[..., Awaitable[None]]

GPU_FAILED = {
    "checks": [{"name": "gpu", "ok": False, "code": "GPU_INIT_ERROR", "detail": "no device"}]
}
STREAMING = {
    **READY,
    "checks": [*READY["checks"], {"name": "stream", "ok": True, "detail": "framesDecoded=60"}],
    "frames_decoded": 60,
    "jitter_ms": 2.0,
}


async def _events(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/sessions/{session_id}/events?limit=500", headers=ADMIN)
    return response.json()["items"]  # type: ignore[no-any-return]


def _assert_forward_only(events: list[dict[str, Any]]) -> list[str]:
    phases = [e["phase"] for e in events if e["type"] == "PhaseChanged"]
    for before, after in zip(phases, phases[1:], strict=False):
        assert Phase(after) in TRANSITIONS[Phase(before)], phases
    return phases


@pytest.mark.parametrize("seed", range(6))
async def test_shuffled_concurrent_reports_only_move_forward(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase, seed: int
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    bodies = [READY] * 4 + [STREAMING] * 3 + [GPU_FAILED] * (seed % 2)
    random.Random(seed).shuffle(bodies)
    answers = await asyncio.gather(*(report(client, session["id"], b) for b in bodies))
    assert {a.status_code for a in answers} <= {200, 409}, [a.text for a in answers]
    phases = _assert_forward_only(await _events(client, session["id"]))
    final = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert final["phase"] == phases[-1]
    assert phases.count("Running") <= 1
    assert phases.count("Failed") <= 1
    if "Failed" in phases:  # whatever came after the failure was refused, not applied
        assert final["phase"] == "Failed"
        assert final["reason"] == "GPU_INIT_ERROR"
    else:
        assert final["phase"] == "Running"


async def test_duplicates_of_one_report_record_one_change(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    assert (await report(client, session["id"], READY)).status_code == 200
    before = await _events(client, session["id"])
    answers = await asyncio.gather(*(report(client, session["id"], READY) for _ in range(10)))
    assert {a.status_code for a in answers} == {200}
    assert await _events(client, session["id"]) == before


@pytest.mark.parametrize("end", ["Terminating", "Terminated"])
async def test_late_reports_never_revive_a_deleted_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase, end: str
) -> None:
    session = await make_session()
    path = ["Provisioning", "Starting", "Running", "Terminating", "Terminated"]
    await set_phase(session["id"], *path[: path.index(end) + 1])
    before = await _events(client, session["id"])
    late = [READY, STREAMING, READY, GPU_FAILED]
    answers = await asyncio.gather(*(report(client, session["id"], b) for b in late))
    assert {a.status_code for a in answers} == {409}
    for answer in answers:
        assert answer.headers["content-type"] == "application/problem+json"
        assert end in answer.json()["detail"]
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert after["phase"] == end
    assert await _events(client, session["id"]) == before


async def test_late_good_reports_cannot_undo_a_failure(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    """A Failed pod's agent may still report: refused (409), so the failure's evidence stays
    as it was and nothing moves the session out of Failed except its deletion."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    assert (await report(client, session["id"], GPU_FAILED)).json()["phase"] == "Failed"
    answers = await asyncio.gather(
        *(report(client, session["id"], b) for b in [READY, STREAMING, READY, READY])
    )
    assert {a.status_code for a in answers} == {409}
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert (after["phase"], after["reason"]) == ("Failed", "GPU_INIT_ERROR")
    assert _assert_forward_only(await _events(client, session["id"]))[-1] == "Failed"
