"""Queries on api_tokens."""

from __future__ import annotations

import uuid

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import TOKEN_REVOKED_CHANNEL
from app.models import ApiToken


async def get_active_by_hash(db: AsyncSession, token_hash: str) -> ApiToken | None:
    result = await db.execute(
        select(ApiToken).where(ApiToken.token_hash == token_hash, ApiToken.revoked_at.is_(None))
    )
    return result.scalar_one_or_none()


async def get_by_hash(db: AsyncSession, token_hash: str) -> ApiToken | None:
    result = await db.execute(select(ApiToken).where(ApiToken.token_hash == token_hash))
    return result.scalar_one_or_none()


async def bootstrap_tokens(db: AsyncSession) -> list[ApiToken]:
    """Every bootstrap token, revoked ones too, under a transaction lock: replicas starting
    together sync one at a time."""
    await db.execute(text("SELECT pg_advisory_xact_lock(hashtext('vdi-bootstrap-token'))"))
    result = await db.execute(
        select(ApiToken).where(ApiToken.bootstrap.is_(True)).with_for_update()
    )
    return list(result.scalars())


async def get(db: AsyncSession, token_id: uuid.UUID) -> ApiToken | None:
    return await db.get(ApiToken, token_id)


async def list_all(db: AsyncSession) -> list[ApiToken]:
    result = await db.execute(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))
    return list(result.scalars())


async def notify_revoked(db: AsyncSession, token_id: uuid.UUID) -> None:
    await db.execute(select(func.pg_notify(TOKEN_REVOKED_CHANNEL, str(token_id))))
