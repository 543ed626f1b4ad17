"""GET /v1/audit (admin) and the desktops' audit webhook (Selkies', per-session token)."""

from __future__ import annotations

import hmac
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.audit import service
from app.audit.schemas import AuditPage, DesktopAuditEvent
from app.auth.deps import AUTH_ERRORS, Admin, BearerCredentials
from app.config import DNS_LABEL_PATTERN, Settings
from app.db import DbSession
from app.errors import Forbidden, NotFound, Unauthorized, problem_responses
from app.security import agent_token, desktop_audit_token

router = APIRouter(tags=["audit"])


class AuditSessionNotFound(NotFound):
    """No session has this id."""

    slug, title = "audit-session-not-found", "Session not found"


@router.get(
    "/v1/audit",
    name="list_audit_records",
    responses=problem_responses(*AUTH_ERRORS),
    summary="The audit trail, oldest first (filters; `after` pages on)",
    description="The control plane's actions (with the API token's name as `actor`) and the "
    "desktops' (`desktop.*`, as each session's Selkies reported them: connects, clipboard and "
    "file transfers, recordings; metadata only). Records outlive their sessions.",
)
async def list_audit_records(
    db: DbSession,
    _: Admin,
    user: Annotated[str | None, Query(pattern=DNS_LABEL_PATTERN, max_length=63)] = None,
    session: Annotated[uuid.UUID | None, Query(description="A session's id")] = None,
    type: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z][a-z0-9_.]{0,47}\*?$",
            description="A type (`share.create`), or a family with a trailing `*` (`desktop.*`)",
        ),
    ] = None,
    since: Annotated[datetime | None, Query(description="At or after this instant")] = None,
    until: Annotated[datetime | None, Query(description="Before this instant")] = None,
    after: Annotated[int, Query(ge=0, le=2**63 - 1, description="Records after this id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    items, next_cursor = await service.list_records(
        db,
        user=user,
        session_id=session,
        type=type,
        since=since,
        until=until,
        after=after,
        limit=limit,
    )
    return AuditPage(items=items, next_cursor=next_cursor)


@router.post(
    "/v1/sessions/{session_id}/desktop-audit",
    name="record_desktop_audit_event",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(*AUTH_ERRORS, AuditSessionNotFound),
    summary="One event of the session's Selkies audit webhook (its desktop audit token)",
    description="Selkies 2.x's `audit_webhook_url` points here; its bearer token is derived "
    "from the session's agent token. Kept as `desktop.<event>` with its metadata.",
)
async def record_desktop_audit_event(
    session_id: uuid.UUID,
    body: DesktopAuditEvent,
    db: DbSession,
    request: Request,
    credentials: BearerCredentials,
) -> Response:
    settings: Settings = request.app.state.settings
    if credentials is None:
        raise Unauthorized("Send the session's desktop audit token as `Authorization: Bearer`")
    expected = desktop_audit_token(agent_token(settings.require_secret_key(), session_id))
    if not hmac.compare_digest(expected, credentials.credentials):
        raise Forbidden("This is not the desktop audit token of this session")
    if await service.record_desktop_event(db, session_id, body) is None:
        raise AuditSessionNotFound(f"No session with id {session_id}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
