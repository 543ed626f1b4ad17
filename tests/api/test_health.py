"""POST /v1/sessions/{id}/health: the agent's report moves the session."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.db import asyncpg_dsn, on_direct_pool, open_direct_pool
from app.security import agent_token
from app.sessions import heartbeat
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog
from tests.conftest import ADMIN, TEST_SECRET_KEY, bearer

MakeSession = Callable[..., Awaitable[dict[str, Any]]]
SetPhase = Callable[..., Awaitable[None]]

READY = {
    "checks": [
        {"name": "gpu", "ok": True},
        {"name": "encoder", "ok": True, "detail": "nvh264enc initialised"},
    ],
    "encoder": "nvh264enc",
    "fallback": False,
    "framerate": 60,
    "bitrate_kbps": 8000,
}


def agent(session_id: str) -> dict[str, str]:
    return bearer(agent_token(TEST_SECRET_KEY, uuid.UUID(session_id)))


async def report(
    client: httpx.AsyncClient,
    session_id: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return await client.post(
        f"/v1/sessions/{session_id}/health",
        json=body,
        headers=agent(session_id) if headers is None else headers,
    )


async def test_ready_report_moves_starting_to_running(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    response = await report(client, session["id"], READY)
    assert response.status_code == 200
    body = response.json()
    assert body["phase"] == "Running"
    assert body["encoder"] == "nvh264enc"
    # time to desktop: created, objects existed (Starting), Running, in that order
    at = {k: datetime.fromisoformat(v) for k, v in body.items() if k.endswith("_at") and v}
    assert at["created_at"] <= at["provisioned_at"] <= at["running_at"]
    assert body["scheduled_at"] is None  # no pod was seen here (the reconciler's tests see one)
    assert body["warm"] is False
    conditions = {c["type"]: c for c in body["conditions"]}
    assert conditions["GPUAvailable"]["status"] == "True"
    assert conditions["EncoderReady"]["message"] == "nvh264enc initialised"
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()[
        "items"
    ]
    assert [(e["type"], e["phase"]) for e in events][-3:] == [
        ("ConditionChanged", "Starting"),
        ("ConditionChanged", "Starting"),
        ("PhaseChanged", "Running"),
    ]


async def test_gpu_init_error_fails_the_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    failed = await report(
        client,
        session["id"],
        {
            "checks": [
                {
                    "name": "gpu",
                    "ok": False,
                    "code": "GPU_INIT_ERROR",
                    "detail": "nvidia-smi: No devices were found",
                }
            ]
        },
    )
    assert failed.json()["phase"] == "Failed"
    assert failed.json()["reason"] == "GPU_INIT_ERROR"
    assert failed.json()["message"] == "nvidia-smi: No devices were found"
    # a late, duplicated "ready" report does not revive it: it is refused
    stale = await report(client, session["id"], READY)
    assert stale.status_code == 409
    body = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert body["phase"] == "Failed"


async def test_fallback_forbidden_by_template_fails(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session(encoder_fallback=False)
    await set_phase(session["id"], "Provisioning", "Starting")
    body = {**READY, "encoder": "x264enc", "fallback": True}
    response = await report(client, session["id"], body)
    assert (response.json()["phase"], response.json()["reason"]) == (
        "Failed",
        "ENCODER_UNAVAILABLE",
    )


async def test_fallback_allowed_runs_with_software_fallback_reason(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    response = await report(
        client, session["id"], {**READY, "encoder": "x264enc", "fallback": True}
    )
    body = response.json()
    assert body["phase"] == "Running"
    assert {c["type"]: c["reason"] for c in body["conditions"]}[
        "EncoderReady"
    ] == "SoftwareFallback"


async def test_another_sessions_agent_token_is_403(
    client: httpx.AsyncClient, make_session: MakeSession
) -> None:
    mine, theirs = await make_session("alice"), await make_session("bob")
    response = await report(client, mine["id"], READY, headers=agent(theirs["id"]))
    assert response.status_code == 403
    assert (
        await report(client, mine["id"], READY, headers=ADMIN)
    ).status_code == 403  # an API token is not an agent token
    assert (await report(client, mine["id"], READY, headers={})).status_code == 401


async def test_reports_on_a_deleted_session_are_refused(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(
        session["id"], "Provisioning", "Starting", "Running", "Terminating", "Terminated"
    )
    response = await report(client, session["id"], READY)
    assert response.status_code == 409
    assert (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()[
        "phase"
    ] == "Terminated"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"checks": [{"name": "disk", "ok": True}]}, "checks.0.name"),
        ({"checks": [{"name": "gpu"}]}, "checks.0.ok"),
        ({"checks": [], "jitter_ms": -1}, "jitter_ms"),
        ({"checks": [], "resolution": "big"}, "resolution"),
        ({"checks": [{"name": "gpu", "ok": False, "code": "<script>"}]}, "checks.0.code"),
    ],
)
async def test_malformed_reports_are_422(
    client: httpx.AsyncClient, make_session: MakeSession, body: dict[str, Any], field: str
) -> None:
    session = await make_session()
    response = await report(client, session["id"], body)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == field


async def test_health_report_metrics_count_outcomes(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    await report(client, session["id"], READY)
    await report(client, session["id"], READY)
    metrics = (await client.get("/metrics")).text
    assert 'vdi_health_reports_total{outcome="running"} 1.0' in metrics
    assert 'vdi_health_reports_total{outcome="unchanged"} 1.0' in metrics
    assert 'vdi_sessions{phase="Running"} 1.0' in metrics
    # time to desktop, observed once per session (not again on the heartbeat)
    labels = f'template="{session["template"]}",warm="false"'
    assert f"vdi_session_start_seconds_count{{{labels}}} 1.0" in metrics
    assert f'vdi_session_start_seconds_bucket{{le="600.0",{labels}}} 1.0' in metrics


async def test_the_report_carries_the_streamer_and_a_failed_streamer_fails_the_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    ready = {**READY, "encoder": "h264enc/nvenc", "streamer": "selkies 2.1.0"}
    body = (await report(client, session["id"], ready)).json()
    assert (body["phase"], body["streamer"]) == ("Running", "selkies 2.1.0")
    failed = {
        **ready,
        "checks": [
            *READY["checks"],
            {
                "name": "stream",
                "ok": False,
                "code": "STREAMER_FAILED",
                "detail": "selkies 2.1.0 exited with a configuration error (78); last output: ...",
            },
        ],
    }
    body = (await report(client, session["id"], failed)).json()
    assert (body["phase"], body["reason"]) == ("Failed", "STREAMER_FAILED")
    assert "configuration error (78)" in body["message"]
    stream = {c["type"]: c for c in body["conditions"]}["StreamHealthy"]
    assert (stream["status"], stream["reason"]) == ("False", "STREAMER_FAILED")


async def test_an_unhealthy_stream_alone_does_not_fail_the_session(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    unhealthy = {
        **READY,
        "checks": [*READY["checks"], {"name": "stream", "ok": False, "code": "StreamUnhealthy"}],
    }
    assert (await report(client, session["id"], unhealthy)).json()["phase"] == "Running"


async def test_a_report_before_the_pod_exists_is_refused_and_moves_nothing(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    for phases in ((), ("Provisioning",)):
        await set_phase(session["id"], *phases)
        early = await report(client, session["id"], READY)
        assert early.status_code == 409
        assert early.json()["type"].endswith(":session-not-started")
        assert early.headers["retry-after"] == "1"
        body = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
        assert body["phase"] == (phases[-1] if phases else "Pending")
        assert body["running_at"] is None


async def test_reports_on_a_failed_session_leave_its_evidence_as_it_was(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    gpu_failed = {
        "checks": [
            {"name": "gpu", "ok": False, "code": "GPU_INIT_ERROR", "detail": "No devices found"}
        ]
    }
    failed = (await report(client, session["id"], gpu_failed)).json()
    assert (failed["phase"], failed["reason"]) == ("Failed", "GPU_INIT_ERROR")
    later = await report(client, session["id"], READY)
    assert later.status_code == 409
    assert later.json()["title"] == "Session has ended"
    after = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert after["conditions"] == failed["conditions"]  # the GPU still shows as failed
    assert (after["phase"], after["reason"]) == ("Failed", "GPU_INIT_ERROR")


def with_stream(ok: bool, frames: int) -> dict[str, Any]:
    detail = f"framesDecoded={frames}" if ok else "framesDecoded not moving"
    return {**READY, "checks": [*READY["checks"], {"name": "stream", "ok": ok, "detail": detail}]}


async def events_of(client: httpx.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/sessions/{session_id}/events", headers=ADMIN)
    return list(response.json()["items"])


async def test_reports_past_the_rate_limit_get_429_for_that_session_only(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    flooded, other = await make_session("kim"), await make_session("lee")
    for session in (flooded, other):
        await set_phase(session["id"], "Provisioning", "Starting")
    answers = [(await report(client, flooded["id"], READY)).status_code for _ in range(31)]
    assert answers[:30] == [200] * 30  # VDI_REPORT_RATE_LIMIT: 30/minute
    refused = await report(client, flooded["id"], READY)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["title"] == "Too many requests"
    assert (await report(client, other["id"], READY)).status_code == 200


async def test_identical_reports_add_no_event_and_the_log_keeps_transitions(
    client: httpx.AsyncClient,
    make_session: MakeSession,
    set_phase: SetPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eventlog, "MAX_DETAIL_EVENTS", 4)
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    assert (await report(client, session["id"], READY)).json()["phase"] == "Running"
    before = await events_of(client, session["id"])
    for _ in range(5):
        assert (await report(client, session["id"], READY)).status_code == 200
    assert await events_of(client, session["id"]) == before  # identical: nothing added

    for index in range(12):  # the stream flapping: a condition change each time
        assert (await report(client, session["id"], with_stream(index % 2 == 0, index))).is_success
    after = await events_of(client, session["id"])
    details = [e for e in after if e["type"] == "ConditionChanged"]
    transitions = [e["data"]["to"] for e in after if e["type"] == "PhaseChanged"]
    assert len(details) == 4  # the newest 4 condition changes
    assert details[-1]["message"] == "framesDecoded not moving"
    assert transitions == ["Pending", "Provisioning", "Starting", "Running"]  # all kept


async def test_a_heartbeat_that_changes_nothing_is_one_update_and_tells_the_interval(
    client: httpx.AsyncClient, app: FastAPI, make_session: MakeSession, set_phase: SetPhase
) -> None:
    """The common heartbeat (a Running session, the same checks as last time) takes the fast
    path: no row lock, no event, the clock moved; a changed report takes the full path."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    first = await report(client, session["id"], READY)
    assert first.json()["phase"] == "Running"
    interval = int(first.headers["VDI-Report-Interval"])
    assert 1 <= interval <= app.state.settings.heartbeat_timeout_s // 3

    async def clock() -> tuple[Any, Any, Any]:
        async with app.state.sessionmaker() as db:
            row = await repository.get(db, uuid.UUID(session["id"]))
            assert row is not None
            return row.last_report_at, row.next_reconcile_at, row.conditions

    before = await clock()
    events_before = await events_of(client, session["id"])
    # figures and details differ, the meaning does not: the fast path
    again = dict(READY, framerate=30, checks=[*READY["checks"]])
    again["checks"][1] = {"name": "encoder", "ok": True, "detail": "another detail"}
    answered = await report(client, session["id"], again)
    assert answered.status_code == 200
    assert answered.json()["phase"] == "Running"
    assert answered.headers["VDI-Report-Interval"] == str(interval)
    after = await clock()
    assert after[0] > before[0]  # last report moved
    assert after[1] >= before[1]  # the heartbeat deadline moved with it
    assert after[2] == before[2]  # conditions untouched (no write of the JSON)
    assert await events_of(client, session["id"]) == events_before
    metrics = (await client.get("/metrics")).text
    assert 'vdi_health_reports_total{outcome="unchanged"}' in metrics

    # a changed verdict goes the full way: the session fails on a broken encoder
    broken = dict(READY, checks=[{"name": "gpu", "ok": True}, {"name": "encoder", "ok": False}])
    failed = await report(client, session["id"], broken)
    assert failed.json()["phase"] == "Failed"
    assert failed.json()["reason"] == "ENCODER_UNAVAILABLE"


async def test_the_heartbeat_lane_answers_as_the_route_does(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    """The unchanged heartbeat is answered before the framework routes it; its answer is the
    route's, and every other case still reaches the route (its errors, its limiter)."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    by_route = await report(client, session["id"], READY)  # Starting -> Running: the route
    by_lane = await report(client, session["id"], READY)  # unchanged: the lane
    assert by_lane.status_code == 200
    assert by_lane.headers["content-type"] == "application/json"
    assert by_lane.headers["VDI-Report-Interval"] == by_route.headers["VDI-Report-Interval"]
    assert by_lane.headers["X-Request-ID"]
    fetched = (await client.get(f"/v1/sessions/{session['id']}", headers=ADMIN)).json()
    assert by_lane.json() == fetched  # the session as GET shows it
    assert set(by_lane.json()) == set(by_route.json())

    wrong = await report(client, session["id"], READY, headers=agent(str(uuid.uuid4())))
    assert wrong.status_code == 403
    assert wrong.headers["content-type"] == "application/problem+json"
    malformed = await client.post(
        f"/v1/sessions/{session['id']}/health",
        content=b'{"checks": "no"}',
        headers={**agent(session["id"]), "content-type": "application/json"},
    )
    assert malformed.status_code == 422
    metrics = (await client.get("/metrics")).text
    assert 'route="/v1/sessions/{session_id}/health"' in metrics  # labelled as the route


async def test_a_changed_report_is_decided_once(
    client: httpx.AsyncClient,
    make_session: MakeSession,
    set_phase: SetPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lane admits a changed report (parsed, authorized, counted, its single statement
    tried once) and the route folds it in without trying that statement again."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    tried: list[str] = []
    real = heartbeat.touch

    async def counted(pool: Any, settings: Any, session_id: uuid.UUID, digest: str) -> Any:
        tried.append(str(session_id))
        return await real(pool, settings, session_id, digest)

    monkeypatch.setattr(heartbeat, "touch", counted)
    running = await report(client, session["id"], READY)  # Starting -> Running
    assert running.json()["phase"] == "Running"
    assert tried == [session["id"]]
    unchanged = await report(client, session["id"], READY)
    assert unchanged.json()["phase"] == "Running"
    assert tried == [session["id"]] * 2  # the lane's statement answered it


async def report_meeting(
    client: httpx.AsyncClient,
    session_id: str,
    monkeypatch: pytest.MonkeyPatch,
    error: asyncpg.PostgresError,
) -> httpx.Response:
    """A ready report whose heartbeat statement meets `error` from the database."""

    async def failing(*_args: Any) -> None:
        raise error

    monkeypatch.setattr(heartbeat, "touch", failing)
    return await report(client, session_id, READY)


async def test_the_heartbeat_pool_meeting_the_database_away_is_a_503_not_a_500(
    client: httpx.AsyncClient,
    make_session: MakeSession,
    set_phase: SetPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The heartbeat's plain asyncpg pool raises asyncpg's own errors (no SQLAlchemy wrapper):
    Postgres starting up is still 'retry later', as for every other request."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    error = asyncpg.CannotConnectNowError("the database system is starting up")
    answered = await report_meeting(client, session["id"], monkeypatch, error)
    assert answered.status_code == 503
    assert answered.headers["retry-after"]
    assert answered.headers["content-type"] == "application/problem+json"


async def test_a_full_database_disk_is_a_503_and_readyz_says_not_ready(
    client: httpx.AsyncClient,
    make_session: MakeSession,
    set_phase: SetPhase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLSTATE 53100 (No space left on device): retry later, not a 500, and not ready."""
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    assert (await client.get("/readyz")).status_code == 200
    error = asyncpg.DiskFullError("could not extend file: No space left on device")
    answered = await report_meeting(client, session["id"], monkeypatch, error)
    assert answered.status_code == 503
    assert answered.headers["retry-after"]
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert "disk space" in ready.json()["detail"]


async def test_a_failing_turn_renewal_is_a_condition_not_a_failure(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    expiring = {
        "name": "relay",
        "ok": False,
        "code": "TurnCredentialsExpiring",
        "detail": "TURN renewal failing (12 in a row); the credential expires in 40 s",
    }
    checks = [*READY["checks"], expiring, {**expiring, "name": "stream"}]
    body = (await report(client, session["id"], {**READY, "checks": checks})).json()
    assert body["phase"] == "Running"
    conditions = {c["type"]: c for c in body["conditions"]}
    assert (conditions["RelayReady"]["status"], conditions["RelayReady"]["reason"]) == (
        "False",
        "TurnCredentialsExpiring",
    )
    assert conditions["StreamHealthy"]["status"] == "False"
    fresh = [*READY["checks"], {"name": "relay", "ok": True}]
    body = (await report(client, session["id"], {**READY, "checks": fresh})).json()
    relay = {c["type"]: c for c in body["conditions"]}["RelayReady"]
    assert (relay["status"], relay["reason"]) == ("True", "CredentialsFresh")


async def test_a_connection_closed_under_the_direct_pool_is_retried_on_a_fresh_one(
    database_url: str,
) -> None:
    """A restarted database leaves the pool's idle connection dead: the work runs once more, on
    a new connection, and its answer stands."""
    pool = await open_direct_pool(asyncpg_dsn(database_url))
    try:
        first = await pool.acquire()
        backend = await first.fetchval("SELECT pg_backend_pid()")
        await pool.release(first)
        # another session ends it, as a server restart does, while it idles in the pool
        other = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            assert await other.fetchval("SELECT pg_terminate_backend($1)", backend)
        finally:
            await other.close()

        pids: list[int] = []

        async def work(connection: asyncpg.Connection) -> int:
            pids.append(await connection.fetchval("SELECT pg_backend_pid()"))
            return pids[-1]

        answered = await on_direct_pool(pool, work)
        assert answered != backend
        assert pids[-1] == answered
    finally:
        await pool.close()


async def test_a_finished_direct_query_stands_when_giving_its_connection_back_fails(
    database_url: str,
) -> None:
    """Seen in the Postgres-restart test as a heartbeat's 500: the query had answered, and the
    reset query run when the connection went back to the pool found the protocol mid-operation
    (InternalClientError). The pool terminates that connection itself; the answer stands and
    the work is not run twice."""
    resets = 0

    async def reset(connection: asyncpg.Connection) -> None:
        nonlocal resets
        resets += 1
        if resets == 1:
            raise asyncpg.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress"
            )

    pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=0, max_size=2, reset=reset)
    try:
        runs: list[int] = []

        async def work(connection: asyncpg.Connection) -> int:
            runs.append(1)
            return int(await connection.fetchval("SELECT 41 + 1"))

        assert await on_direct_pool(pool, work) == 42
        assert len(runs) == 1
        assert await on_direct_pool(pool, work) == 42  # the pool goes on, with a new one
    finally:
        await pool.close()


async def test_a_direct_pool_closed_under_twice_is_the_database_away(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """Lost again on the fresh connection: a 503 with Retry-After, as for the ORM's errors,
    never a 500."""
    from fastapi import APIRouter

    from app.errors import DatabaseAway

    async def work(connection: asyncpg.Connection) -> int:
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle")

    with pytest.raises(DatabaseAway):
        await on_direct_pool(app.state.direct_pool, work)

    router = APIRouter()

    @router.get("/v1/test-direct-pool")
    async def direct() -> int:
        return await on_direct_pool(app.state.direct_pool, work)

    app.include_router(router)
    response = await client.get("/v1/test-direct-pool", headers=ADMIN)
    assert response.status_code == 503
    assert response.json()["type"].endswith(":database-unavailable")
    assert response.headers["retry-after"].isdigit()


async def test_adaptations_the_agent_made_are_session_events(
    client: httpx.AsyncClient, make_session: MakeSession, set_phase: SetPhase
) -> None:
    session = await make_session()
    await set_phase(session["id"], "Provisioning", "Starting")
    await report(client, session["id"], READY)
    capped = {
        "what": "framerate",
        "before": "60",
        "after": "30",
        "why": "host CPU above 80% for 10 s",
        "live": True,
    }
    restarted = {
        "what": "bitrate_kbps",
        "before": "8000",
        "after": "6000",
        "why": "latency 120 ms above 100 ms",
        "live": False,
    }
    body = await report(client, session["id"], {**READY, "adaptations": [capped, restarted]})
    assert body.json()["phase"] == "Running", body.text
    events = (await client.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()
    adapted = [e for e in events["items"] if e["type"] == "StreamAdapted"]
    assert [(e["reason"], e["data"]) for e in adapted] == [
        ("framerate", capped),
        ("bitrate_kbps", restarted),
    ]
    assert adapted[0]["message"] == (
        "framerate 60 -> 30 (live, its viewers kept): host CPU above 80% for 10 s"
    )
    assert "the streamer restarted" in adapted[1]["message"]
    # a value that is no stream setting is refused, and nothing of it is stored
    bad = {**READY, "adaptations": [{**capped, "what": "volume"}]}
    refused = await report(client, session["id"], bad)
    assert refused.status_code == 422
    after = (await client.get(f"/v1/sessions/{session['id']}/events", headers=ADMIN)).json()
    assert len(after["items"]) == len(events["items"])
