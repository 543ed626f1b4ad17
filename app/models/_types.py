"""Column helpers shared by the tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import DateTime

TZDateTime = DateTime(timezone=True)


def utcnow() -> datetime:
    return datetime.now(UTC)
