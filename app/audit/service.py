"""Audit records: written in the transaction of what they record (so a record exists exactly
when its action happened), sanitized where they come from a desktop, paged through."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.schemas import AuditRecordOut, DesktopAuditEvent
from app.models import AuditRecord, VDISession
from app.models._types import utcnow

DESKTOP_ACTOR = "desktop"
# What of a Selkies audit event is kept: metadata, each a scalar of bounded size (never a
# clipboard's text or a file's bytes, which Selkies does not send either)
DESKTOP_FIELDS: dict[str, type | tuple[type, ...]] = {
    "mime_type": str,
    "size_bytes": int,
    "filename": str,
    "role": str,
    "transport": str,
    "slot": int,
    "duration_s": (int, float),
    "partial": bool,
    "multipart": bool,
    "count": int,
    "error": str,
}
MAX_TEXT = 300


def record(
    db: AsyncSession,
    type: str,
    *,
    actor: str | None,
    user: str | None = None,
    session_id: uuid.UUID | None = None,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """Add a record to the caller's transaction (committed with what it records)."""
    row = AuditRecord(
        at=at or utcnow(),
        type=type,
        actor=actor,
        user=user,
        session_id=session_id,
        data=data or {},
    )
    db.add(row)
    return row


def desktop_data(event: DesktopAuditEvent) -> dict[str, Any]:
    """The metadata of a Selkies audit event that is kept (DESKTOP_FIELDS), texts cut short."""
    extra = event.model_extra or {}
    kept: dict[str, Any] = {}
    for name, kind in DESKTOP_FIELDS.items():
        value = extra.get(name)
        if value is None or isinstance(value, bool) and kind is not bool:
            continue
        if isinstance(value, kind):
            kept[name] = value[:MAX_TEXT] if isinstance(value, str) else value
    if event.ts:
        kept["reported_at"] = event.ts
    return kept


async def record_desktop_event(
    db: AsyncSession, session_id: uuid.UUID, event: DesktopAuditEvent
) -> AuditRecord | None:
    """A Selkies audit event of the session, as `desktop.<event>`; None for no session."""
    session = await db.get(VDISession, session_id)
    if session is None:
        return None
    await db.flush()
    return record(
        db,
        f"desktop.{event.event}",
        actor=DESKTOP_ACTOR,
        user=session.user or None,
        session_id=session_id,
        data=desktop_data(event),
    )


async def list_records(
    db: AsyncSession,
    *,
    user: str | None,
    session_id: uuid.UUID | None,
    type: str | None,
    since: datetime | None,
    until: datetime | None,
    after: int,
    limit: int,
) -> tuple[list[AuditRecordOut], int | None]:
    query = select(AuditRecord).where(AuditRecord.id > after)
    if user is not None:
        query = query.where(AuditRecord.user == user)
    if session_id is not None:
        query = query.where(AuditRecord.session_id == session_id)
    if type is not None:
        # a type, or a family of them with a trailing `*` (`desktop.*`, `share.*`)
        query = (
            query.where(AuditRecord.type.startswith(type[:-1], autoescape=True))
            if type.endswith("*")
            else query.where(AuditRecord.type == type)
        )
    if since is not None:
        query = query.where(AuditRecord.at >= since)
    if until is not None:
        query = query.where(AuditRecord.at < until)
    rows = list(await db.scalars(query.order_by(AuditRecord.id).limit(limit + 1)))
    page = [to_schema(row) for row in rows[:limit]]
    return page, (page[-1].id if len(rows) > limit else None)


def to_schema(row: AuditRecord) -> AuditRecordOut:
    return AuditRecordOut(
        id=row.id,
        at=row.at,
        type=row.type,
        actor=row.actor,
        user=row.user,
        session_id=row.session_id,
        data=row.data,
    )
