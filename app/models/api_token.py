"""API tokens: only the SHA-256 of each token is stored."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Boolean, String, Text, false
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models._types import TZDateTime, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # Made from VDI_BOOTSTRAP_TOKEN: revoked when that setting changes or is unset.
    bootstrap: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Why it was revoked: "admin" (DELETE /v1/tokens/{id}: sticks) or "rotated" (its bootstrap
    # value was replaced or unset: undone if the value comes back).
    revoked_reason: Mapped[str | None] = mapped_column(String(16))
    # VDI_BOOTSTRAP_GENERATION of the replica that last made this value current.
    bootstrap_generation: Mapped[int | None] = mapped_column(BigInteger)
