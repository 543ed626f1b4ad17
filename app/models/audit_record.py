"""The audit trail: who did what to which session, the control plane's own actions (with the
API token's name) and its desktops' (Selkies' audit webhook: connects, clipboard and file
transfers, recordings; metadata only, never contents). Kept when the session ends."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Identity, Index, Integer, String, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models._types import TZDateTime, utcnow


class AuditRecord(Base):
    __tablename__ = "audit_records"
    __table_args__ = (
        Index("ix_audit_records_session_id_id", "session_id", "id"),
        Index("ix_audit_records_user_id", "user", "id"),
        Index("ix_audit_records_at", "at"),
        Index(
            "ix_audit_records_undelivered",
            "id",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(48))
    # the API token's name; "desktop" for what the session's Selkies reported
    actor: Mapped[str | None] = mapped_column(String(100))
    user: Mapped[str | None] = mapped_column(String(63))
    session_id: Mapped[uuid.UUID | None] = mapped_column()
    data: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # the outgoing webhook (VDI_AUDIT_WEBHOOK_URL): when it took the record, and the tries
    delivered_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
