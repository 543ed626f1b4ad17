"""The schema comes only from migrations: they build it, match the models, and go down and up."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import app.models  # noqa: F401
from app import migrate
from app.db import Base, async_url


async def _tables(url: str) -> set[str]:
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {row["tablename"] for row in rows}
    finally:
        await connection.close()


async def _diff(url: str) -> list[object]:
    engine = create_async_engine(async_url(url), poolclass=NullPool)

    def _compare(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_compare)
    finally:
        await engine.dispose()


async def test_migration_upgrade_check_downgrade_upgrade(
    make_database: Callable[[str], Awaitable[str]],
) -> None:
    url = await make_database("vdi_migration_test")
    assert await _tables(url) == set()

    await asyncio.to_thread(migrate.upgrade, url)
    assert await _tables(url) >= {
        "sessions",
        "templates",
        "session_events",
        "api_tokens",
        "idempotency_keys",
    }
    assert await migrate.current_revision(url) == migrate.head_revision()
    assert await _diff(url) == [], "models and migrations disagree: write a migration"

    await asyncio.to_thread(migrate.downgrade, url, "base")
    assert await _tables(url) == {"alembic_version"}
    assert await migrate.current_revision(url) is None

    await asyncio.to_thread(migrate.upgrade, url)
    assert await _diff(url) == []
