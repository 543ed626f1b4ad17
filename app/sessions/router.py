"""HTTP routes of /v1/sessions."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from app.audit import service as audit
from app.auth.deps import (
    AUTH_ERRORS,
    BearerCredentials,
    SessionsConnect,
    SessionsRead,
    SessionsWrite,
)
from app.config import DNS_LABEL_PATTERN, Settings
from app.db import DbSession
from app.errors import (
    Forbidden,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
    problem_responses,
)
from app.security import check_agent_token
from app.sessions import heartbeat, service, warm
from app.sessions.lane import COUNTED, REPORT_INTERVAL_HEADER
from app.sessions.schemas import (
    Connection,
    HealthReport,
    Phase,
    Session,
    SessionCreate,
    SessionEventList,
    SessionEventOut,
    SessionPage,
    TurnCredentials,
)
from app.sessions.streams import StreamRegistry

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
log = structlog.get_logger("vdi.sessions")

EVENT_STREAM = "text/event-stream"
# On a report's answer (REPORT_INTERVAL_HEADER): seconds until the agent's next report if
# nothing changes.
MAX_EVENT_ID = 2**63 - 1  # bigint
EVENT_ID = re.compile(r"[0-9]{1,19}")


async def _settings(request: Request) -> Settings:  # async: no hop to a worker thread
    settings: Settings = request.app.state.settings
    return settings


AppSettings = Annotated[Settings, Depends(_settings)]


async def warm_router(request: Request) -> warm.WarmRouter | None:
    """The runtime's router of warm claims (None: no cluster, no pools)."""
    router: warm.WarmRouter | None = request.app.state.warm_router
    return router


WarmRoutes = Annotated[warm.WarmRouter | None, Depends(warm_router)]


def _json(
    model: BaseModel, headers: dict[str, str] | None = None, status_code: int = 200
) -> Response:
    """The model as JSON, serialized once. (Returned as a model, FastAPI would dump it,
    validate the dump against the response model and dump it again: for a page of fifty
    sessions that was most of the request.) The route's `response_model` documents it."""
    return Response(
        model.model_dump_json(),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _admitted(request: Request, session_id: uuid.UUID) -> heartbeat.Admitted | None:
    """The heartbeat lane's record of this report, when it admitted it (its token checked)."""
    admitted = request.scope.get("state", {}).get(heartbeat.ADMITTED)
    if isinstance(admitted, heartbeat.Admitted) and admitted.session_id == session_id:
        return admitted
    return None


async def _agent_of_session(
    session_id: uuid.UUID, credentials: BearerCredentials, settings: AppSettings, request: Request
) -> uuid.UUID:
    if _admitted(request, session_id) is not None:
        return session_id  # the lane checked this token
    if credentials is None:
        raise Unauthorized("Send the session's agent token as `Authorization: Bearer <token>`")
    if not check_agent_token(settings.require_secret_key(), session_id, credentials.credentials):
        raise Forbidden("This is not the agent token of this session")
    return session_id


AgentOfSession = Annotated[uuid.UUID, Depends(_agent_of_session)]


@router.post(
    "",
    name="create_session",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        202: {
            "description": "The session (a replay: the first answer to this Idempotency-Key)",
            "headers": {
                "Location": {"$ref": "#/components/headers/Location", "required": True},
                # inline: a referenced header is a required one to openapi-typescript
                "Idempotent-Replayed": {
                    "description": "`true` when this answer is the first answer to the same "
                    "Idempotency-Key and body, sent again (no new session was created)",
                    "required": False,
                    "schema": {"type": "string", "enum": ["true"]},
                },
            },
        },
        **problem_responses(*AUTH_ERRORS, service.UserSessionLimit, service.IdempotencyKeyReused),
    },
    summary="Ask for a desktop session for a user",
    description=(
        "Stores the session in `Pending` and returns at once; the reconciler provisions it. "
        "For a template with a warm pool and a member ready, the session is that member, "
        "already checked: `Running` and `warm: true` (the user's route is created before the "
        "answer; should that fail, the reconciler retries it and `reason` is `WarmClaimed`). "
        "Retry safely with the same `Idempotency-Key`: the first result is returned again."
    ),
    response_model=Session,
)
async def create_session(
    body: SessionCreate,
    db: DbSession,
    principal: SessionsWrite,
    settings: AppSettings,
    router: WarmRoutes,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$"),
    ] = None,
) -> Response:
    result = await service.create_session(
        db, settings, body, token_id=principal.token_id, idempotency_key=idempotency_key
    )
    if not isinstance(result, service.Replay):
        audit.record(
            db,
            "session.create",
            actor=principal.name,
            user=result.user,
            session_id=result.id,
            data={"template": result.template_name, "warm": result.warm},
        )
    if isinstance(result, service.Replay):
        return JSONResponse(
            result.body,
            status_code=result.status,
            headers={
                "Location": f"/v1/sessions/{result.session_id}",
                "Idempotent-Replayed": "true",
            },
        )
    headers = {"Location": f"/v1/sessions/{result.id}"}
    if result.warm and router is not None:
        # From a warm pool: committed (no transaction is held across a cluster call), then the
        # user's host routed to it, answered Running; its Running record is written right
        # after the answer is sent.
        await db.commit()
        routed = await warm.hand_over(router, result)
        if routed is not None:
            return Response(
                routed.document,
                status_code=202,
                media_type="application/json",
                headers=headers,
                background=BackgroundTask(routed.record),
            )
    return _json(service.to_schema(result), headers=headers, status_code=202)


@router.get(
    "",
    name="list_sessions",
    responses=problem_responses(*AUTH_ERRORS),
    summary="List sessions, newest first (keyset pagination)",
    response_model=SessionPage,
)
async def list_sessions(
    request: Request,
    _: SessionsRead,
    user: Annotated[str | None, Query(pattern=DNS_LABEL_PATTERN, max_length=63)] = None,
    phase: Phase | None = None,
    template: Annotated[str | None, Query(pattern=DNS_LABEL_PATTERN, max_length=63)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    page = await service.list_sessions(
        request.app.state.direct_pool,
        user=user,
        phase=phase,
        template=template,
        limit=limit,
        cursor=cursor,
    )
    return Response(page, media_type="application/json")


@router.get(
    "/{session_id}",
    name="get_session",
    responses=problem_responses(*AUTH_ERRORS, service.SessionNotFound),
    summary="Get one session",
    response_model=Session,
)
async def get_session(session_id: uuid.UUID, db: DbSession, _: SessionsRead) -> Response:
    return _json(service.to_schema(await service.get_session(db, session_id)))


@router.delete(
    "/{session_id}",
    name="delete_session",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(*AUTH_ERRORS, service.SessionNotFound),
    summary="End a session (again on an ended session is not an error)",
)
async def delete_session(
    session_id: uuid.UUID,
    db: DbSession,
    principal: SessionsWrite,
    settings: AppSettings,
    force: Annotated[
        bool,
        Query(description="End the session even if the cluster refuses to delete its objects"),
    ] = False,
) -> Session:
    ended = await service.delete_session(db, settings, session_id, force=force)
    audit.record(
        db,
        "session.delete",
        actor=principal.name,
        user=ended.user or None,
        session_id=ended.id,
        data={"force": force, "phase": ended.phase},
    )
    return service.to_schema(ended)


@router.post(
    "/{session_id}/keepalive",
    name="keepalive_session",
    responses=problem_responses(*AUTH_ERRORS, service.SessionNotFound, service.SessionEnded),
    summary="Push the idle deadline by the template's idle timeout",
)
async def keepalive_session(
    session_id: uuid.UUID, db: DbSession, _: SessionsWrite, settings: AppSettings
) -> Session:
    return service.to_schema(await service.keepalive(db, settings, session_id))


@router.get(
    "/{session_id}/connection",
    name="get_session_connection",
    responses=problem_responses(*AUTH_ERRORS, service.SessionNotFound, service.SessionEnded),
    summary="What the viewer needs: URL, basic-auth credentials and ICE servers",
)
async def get_session_connection(
    session_id: uuid.UUID,
    db: DbSession,
    _: SessionsConnect,
    settings: AppSettings,
    response: Response,
) -> Connection:
    response.headers["Cache-Control"] = "no-store"
    return await service.connection(db, settings, session_id)


def _sse(event: Any) -> dict[str, str]:
    out = SessionEventOut.of(event)
    return {"id": str(out.id), "event": out.type, "data": out.model_dump_json(by_alias=True)}


LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=64,
        description="The `id` of the last event received: the stream resumes after it (an "
        "EventSource sends it by itself when it reconnects)",
    ),
]
After = Annotated[int, Query(ge=0, le=MAX_EVENT_ID, description="Only events with a larger id")]
SSE_DESCRIPTION = (
    "A live Server-Sent Events stream of the session's log (`text/event-stream`, UTF-8, LF line "
    "endings): first the events after `after` (or `Last-Event-ID`), then each new one as it is "
    "stored, until the session is Terminated. Each message is `id: <event id>`, `event: <type>` "
    "and `data: <the event as JSON, one line>` (the `SessionEventFrame` schema; `data` is a "
    "`SessionEventOut`), then a blank line; `: ping` comments every 15 s keep proxies from "
    "closing it. Reconnect with `Last-Event-ID` to resume without a gap or a repeat."
)


@router.get(
    "/{session_id}/events",
    name="list_session_events",
    responses=problem_responses(*AUTH_ERRORS, service.SessionNotFound, TooManyRequests),
    summary="The session's event log (oldest first)",
    description="The stored events after `after`, in order. The same path with "
    "`Accept: text/event-stream` is the live stream that `/events/stream` documents.",
    response_model=SessionEventList,
)
async def list_session_events(
    session_id: uuid.UUID,
    request: Request,
    db: DbSession,
    principal: SessionsRead,
    after: After = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    last_event_id: LastEventId = None,
) -> Response:
    if EVENT_STREAM in request.headers.get("accept", ""):
        return await _event_stream(session_id, request, db, principal, after, last_event_id)
    events = await service.list_events(db, session_id, after=after, limit=limit)
    return _json(SessionEventList(items=[SessionEventOut.of(e) for e in events]))


@router.get(
    "/{session_id}/events/stream",
    name="stream_session_events",
    responses={
        200: {
            "description": SSE_DESCRIPTION,
            "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
        },
        **problem_responses(*AUTH_ERRORS, service.SessionNotFound, TooManyRequests),
    },
    summary="A live stream of the session's events (Server-Sent Events)",
    description=SSE_DESCRIPTION,
    response_class=EventSourceResponse,
)
async def stream_session_events(
    session_id: uuid.UUID,
    request: Request,
    db: DbSession,
    principal: SessionsRead,
    after: After = 0,
    last_event_id: LastEventId = None,
) -> Response:
    return await _event_stream(session_id, request, db, principal, after, last_event_id)


async def _event_stream(
    session_id: uuid.UUID,
    request: Request,
    db: DbSession,
    principal: Any,
    after: int,
    last_event_id: str | None,
) -> Response:
    if last_event_id is not None:
        # ASCII digits only (str.isdigit() takes "²"), and no larger than an event id can be.
        if not EVENT_ID.fullmatch(last_event_id) or int(last_event_id) > MAX_EVENT_ID:
            raise ValidationFailed(
                f"Last-Event-ID must be an event id (digits, at most {MAX_EVENT_ID}); send the "
                "`id` of the last event received",
                field="Last-Event-ID",
                location="header",
            )
        after = max(after, int(last_event_id))

    # The bound first: a stream over it is a 429 that does no database work (the token came
    # from the cache), so a flood of opens cannot queue for the pool ahead of other callers.
    streams: StreamRegistry = request.app.state.streams
    opened = streams.open(principal.token_id)
    try:
        await service.get_session(db, session_id)  # 404 for an unknown session
    except BaseException:
        streams.release(opened)
        raise

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in service.follow_events(
                request.app.state.sessionmaker,
                request.app.state.event_hub,
                session_id,
                after=after,
                closed=opened.closed,
            ):
                yield _sse(event)
        finally:
            streams.release(opened)

    return EventSourceResponse(
        stream(),
        ping=15,
        sep="\n",  # LF: what a hand-written parser splitting on "\n\n" expects
        headers={"Cache-Control": "no-store"},
        background=BackgroundTask(streams.release, opened),  # never iterated: still released
    )


@router.post(
    "/{session_id}/health",
    name="report_session_health",
    responses={
        200: {
            "description": "The session after the report",
            "headers": {
                REPORT_INTERVAL_HEADER: {
                    "description": "Seconds until the agent's next report if nothing changes",
                    "schema": {"type": "integer"},
                }
            },
        },
        **problem_responses(
            *AUTH_ERRORS,
            service.SessionNotFound,
            service.SessionEnded,
            service.SessionNotStarted,
            TooManyRequests,
        ),
    },
    summary="The agent's health report (authorized by that session's agent token)",
    response_model=Session,
)
async def report_session_health(
    session_id: AgentOfSession,
    body: HealthReport,
    request: Request,
    settings: AppSettings,
) -> Response:
    admitted = _admitted(request, session_id)  # by the heartbeat lane: counted already
    counted = admitted is not None or bool(request.scope.get("state", {}).get(COUNTED))
    wait_s = None if counted else request.app.state.report_limit.hit(str(session_id))
    if wait_s is not None:
        request.app.state.metrics.health_reports.labels(outcome="rate_limited").inc()
        raise TooManyRequests(
            f"More than {settings.report_rate_limit} reports for session {session_id}; the "
            "agent reports on each change and every VDI_REPORT_INTERVAL_S. Retry after the "
            "Retry-After delay",
            retry_after_s=wait_s,
        )
    state = request.app.state
    reported = await heartbeat.report(
        state.direct_pool, state.sessionmaker, settings, session_id, body, admitted=admitted
    )
    state.metrics.health_reports.labels(outcome=reported.outcome.value).inc()
    if reported.started is not None:  # once a session: its time to desktop
        template, warm, seconds = reported.started
        state.metrics.session_start_seconds.labels(
            template=template, warm="true" if warm else "false"
        ).observe(seconds)
    interval = str(settings.effective_report_interval_s)
    return Response(
        reported.document,
        media_type="application/json",
        headers={REPORT_INTERVAL_HEADER: interval},
    )


@router.get(
    "/{session_id}/turn",
    name="renew_session_turn_credentials",
    responses=problem_responses(
        *AUTH_ERRORS, service.SessionNotFound, service.SessionEnded, TooManyRequests
    ),
    summary="Fresh TURN credentials for the session's agent (authorized by its agent token)",
    description="Short-lived (`VDI_TURN_CREDENTIAL_TTL_S`): the agent renews Selkies' at a third "
    "of their lifetime while the session lives. 409 once the session has ended; 429 past "
    "`VDI_TURN_RATE_LIMIT` per session.",
)
async def renew_session_turn_credentials(
    session_id: AgentOfSession,
    db: DbSession,
    settings: AppSettings,
    request: Request,
    response: Response,
) -> TurnCredentials:
    wait_s = request.app.state.turn_limit.hit(str(session_id))
    if wait_s is not None:
        raise TooManyRequests(
            f"More than {settings.turn_rate_limit} TURN credentials for session {session_id} "
            "(VDI_TURN_RATE_LIMIT); the agent renews at a third of their lifetime. Retry after "
            "the Retry-After delay",
            retry_after_s=wait_s,
        )
    response.headers["Cache-Control"] = "no-store"
    return await service.turn_for_agent(db, settings, session_id)
