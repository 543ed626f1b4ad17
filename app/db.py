"""Database plumbing: the declarative Base, the async engine (the ORM's), the per-request
transaction, and beside them the direct asyncpg pool for the hot single statements."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, TypeVar

import asyncpg
import orjson
from fastapi import Depends, Request
from sqlalchemy import MetaData, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry

from app.errors import DatabaseAway

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def async_url(url: str) -> str:
    """Accept plain postgresql:// URLs (what operators have) and use the asyncpg driver."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.render_as_string(hide_password=False)


IDLE_PING_S = 10.0


def create_engine(url: str, *, pool_size: int = 20) -> AsyncEngine:
    """A fixed pool (no overflow connections opened and closed under load). A connection that
    sat idle for IDLE_PING_S is pinged before use (a restarted Postgres leaves the pool's
    connections dead); a busy one is not (`pool_pre_ping` would ping on every checkout, ~10%
    of a heartbeat's CPU). A busy connection that died fails its statement, which answers 503
    and makes the pool drop every connection older than it."""
    engine = create_async_engine(
        async_url(url),
        # JSONB columns (conditions, template snapshots) decode with orjson: several times
        # faster than the json module, and a listing decodes fifty rows.
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        pool_timeout=10,  # then 503 + Retry-After (app.errors), not a 30 s wait
    )
    event.listen(engine.sync_engine, "checkin", _checked_in)
    event.listen(engine.sync_engine, "checkout", _ping_if_idle)
    return engine


def json_dumps(value: Any) -> str:
    """JSON for JSONB columns, as the ORM and the heartbeat pool both write it."""
    return orjson.dumps(value).decode()


def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info["checked_in_at"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    idle_since = record.info.get("checked_in_at")
    if idle_since is None or time.monotonic() - idle_since < IDLE_PING_S:
        return
    try:
        dbapi_connection.ping()  # runs in SQLAlchemy's greenlet, like pool_pre_ping's own
    except Exception as error:
        raise DisconnectionError(f"idle connection is gone: {type(error).__name__}") from error


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error.

    Services never commit; they flush. The commit happens before the response is sent
    (dependency scope "function"), so a 2xx means the write is durable.
    """
    maker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    async with maker() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
        else:
            await session.commit()


DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]

# NOTIFY channel of token revocations: every replica ends the event streams the token opened.
TOKEN_REVOKED_CHANNEL = "vdi_token_revoked"


DIRECT_POOL_SIZE = 8
# What asyncpg raises on a pooled connection the server closed: the session's end (08xxx),
# the server's shutdown notice (57P01), or a protocol left mid-operation by it.
CLOSED_UNDER = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.InternalClientError,
    asyncpg.InterfaceError,
)
T = TypeVar("T")


def asyncpg_dsn(database_url: str) -> str:
    """The URL as asyncpg takes it (no SQLAlchemy driver name)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def open_direct_pool(dsn: str) -> asyncpg.Pool:
    """A few plain asyncpg connections for the hot single statements outside the ORM
    (heartbeats, listings), opened on first use (the service starts while the database is
    away), decoding JSONB as the ORM does."""

    async def codecs(connection: asyncpg.Connection) -> None:
        await connection.set_type_codec(
            "jsonb",
            encoder=json_dumps,
            decoder=orjson.loads,
            schema="pg_catalog",
        )

    return await asyncpg.create_pool(dsn, min_size=0, max_size=DIRECT_POOL_SIZE, init=codecs)


async def on_direct_pool(
    pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    """`work` (one autocommitted read, or a write that may run twice) on a pooled connection;
    once more on a fresh one if the first was closed under it (a restarted database leaves
    the pool's idle connections dead, and asyncpg finds out on use, as a lost connection or a
    protocol in a state it cannot leave). Errors after that propagate: the error handlers
    answer a database that is away with 503.

    Giving the connection back runs a reset query on it, which fails the same way on a
    connection that died under (or just after) `work`; the pool terminates such a connection
    itself, so that failure is not this call's: a finished `work`'s result stands."""
    for attempt in (1, 2):
        connection = await pool.acquire()
        try:
            result = await work(connection)
        except CLOSED_UNDER as error:
            # the pool opens a new one in its place; a connection lost mid-query may have been
            # given back to the pool already, and its proxy refuses terminate() then
            with contextlib.suppress(asyncpg.InterfaceError):
                connection.terminate()
            if attempt == 2:
                raise DatabaseAway(type(error).__name__) from error
            continue
        finally:
            with contextlib.suppress(*CLOSED_UNDER):
                await pool.release(connection)
        return result
    raise AssertionError("unreachable: the second attempt returns or raises")
