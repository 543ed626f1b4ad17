"""The queries of the shares."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import SessionEvent, SessionShare

MAX_LISTED = 500


async def list_for_session(db: AsyncSession, session_id: uuid.UUID) -> list[SessionShare]:
    rows = await db.scalars(
        select(SessionShare)
        .where(SessionShare.session_id == session_id)
        .order_by(SessionShare.created_at.desc(), SessionShare.id)
        .limit(MAX_LISTED)
    )
    return list(rows)


async def live_for_session(
    db: AsyncSession, session_id: uuid.UUID, now: datetime
) -> list[SessionShare]:
    rows = await db.scalars(
        select(SessionShare)
        .where(
            SessionShare.session_id == session_id,
            SessionShare.revoked_at.is_(None),
            SessionShare.expires_at > now,
        )
        .order_by(SessionShare.created_at, SessionShare.id)
    )
    return list(rows)


async def get(db: AsyncSession, session_id: uuid.UUID, share_id: uuid.UUID) -> SessionShare | None:
    return await db.scalar(
        select(SessionShare).where(
            SessionShare.session_id == session_id, SessionShare.id == share_id
        )
    )


async def disconnect_requests(
    db: AsyncSession, session_id: uuid.UUID, event_type: str, since: datetime
) -> list[str]:
    """The viewer ids of the session's disconnect requests stored since `since`."""
    rows = await db.scalars(
        select(SessionEvent.data["viewer"].astext)
        .where(
            SessionEvent.session_id == session_id,
            SessionEvent.type == event_type,
            SessionEvent.created_at >= since,
        )
        .order_by(SessionEvent.id)
    )
    return [row for row in rows if row]
