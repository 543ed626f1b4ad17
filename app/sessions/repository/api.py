"""The queries the API's requests make: a session read, listed, created (with its user's
lock and the limit in one statement), claimed from a warm pool, touched by a heartbeat; and
the Idempotency-Keys that make a create safe to retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy import (
    ARRAY,
    Integer,
    Interval,
    String,
    bindparam,
    delete,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import json_dumps
from app.models import IdempotencyKey, SessionEvent, VDISession
from app.sessions.records import SessionRef
from app.sessions.repository.eventlog import EVENTS_CHANNEL
from app.templates.schemas import POLICY_FIELDS


async def get(
    db: AsyncSession, session_id: uuid.UUID, *, for_update: bool = False
) -> VDISession | None:
    query = select(VDISession).where(VDISession.id == session_id)
    if for_update:
        query = query.with_for_update()
    return (await db.execute(query)).scalar_one_or_none()


async def get_phase(db: AsyncSession, session_id: uuid.UUID) -> str | None:
    result = await db.execute(select(VDISession.phase).where(VDISession.id == session_id))
    return result.scalar_one_or_none()


async def lock_user(db: AsyncSession, user: str) -> None:
    """Serialize session creation per user until the transaction ends (any replica)."""
    await db.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": "user:" + user}
    )


async def active_sessions_of_user(
    db: AsyncSession, user: str, phases: Iterable[str]
) -> list[SessionRef]:
    """(id, phase) of the user's sessions in `phases`, oldest first."""
    query = (
        select(VDISession.id, VDISession.phase)
        .where(VDISession.user == user, VDISession.phase.in_(list(phases)))
        .order_by(VDISession.created_at)
    )
    return [SessionRef(row.id, row.phase) for row in await db.execute(query)]


# What a session shows (schemas.Session), as columns named as it names them: lists and the
# heartbeat read these, not ORM entities.
SHOWN_NAMES = (
    "id",
    "user",
    "template_name",
    "phase",
    "reason",
    "message",
    "conditions",
    "url",
    "encoder",
    "streamer",
    "gpu",
    "warm",
    "created_at",
    "updated_at",
    "provisioned_at",
    "scheduled_at",
    "running_at",
    "ended_at",
    "idle_deadline",
    "expires_at",
    "capacity_wait",
    "viewers",
    "recording",
)


# the session's desktop policy: those members of its template's spec (absent: null)
POLICY_SQL = (
    "jsonb_build_object("
    + ", ".join(f"'{name}', \"template_spec\" -> '{name}'" for name in POLICY_FIELDS)
    + ') AS "policy"'
)
SHOWN_SQL = ", ".join(
    [
        '"template_name" AS "template"' if name == "template_name" else f'"{name}"'
        for name in SHOWN_NAMES
    ]
    + [POLICY_SQL]
)


async def list_page(
    connection: asyncpg.Connection,
    *,
    user: str | None,
    phase: str | None,
    template: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    """Newest first, keyset-paginated on (created_at, id): the shown columns of each. One
    autocommitted statement on a plain asyncpg connection (prepared once per connection and
    filter combination), outside the ORM and any transaction: building the ORM's statement,
    its BEGIN and COMMIT were most of a listing's cost."""
    conditions: list[str] = ["NOT pool_member"]  # a warm pool's members belong to no one yet
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if user is not None:
        conditions.append(f'"user" = {arg(user)}')
    if phase is not None:
        conditions.append(f"phase = {arg(phase)}")
    if template is not None:
        conditions.append(f"template_name = {arg(template)}")
    if after is not None:
        conditions.append(f"(created_at, id) < ({arg(after[0])}, {arg(after[1])})")
    where = f"WHERE {' AND '.join(conditions)} "
    rows: list[asyncpg.Record] = await connection.fetch(
        f"SELECT {SHOWN_SQL} FROM sessions {where}"
        f"ORDER BY created_at DESC, id DESC LIMIT {arg(limit)}",
        *args,
    )
    return rows


# A new session, its first event and the reconciler's notice in one statement, stored only while
# the user has fewer than :limit sessions in :counted phases. The caller holds the user's lock
# (lock_user) from an earlier statement, so this statement's snapshot sees every session of the
# user that another transaction committed. (The ORM's way was five round trips and two flushes,
# most of a create's CPU.)
_NEW_SESSION_COLUMNS = (
    "id",
    "user",
    "template_name",
    "template_spec",
    "phase",
    "reason",
    "message",
    "conditions",
    "url",
    "gpu",
    "secrets_encrypted",
    "created_at",
    "updated_at",
    "idle_deadline",
    "expires_at",
    "next_reconcile_at",
    "attempts",
    "force_delete",
    "warm",
)


_INSERT_NEW_SESSION = text(
    f"""
    WITH created AS (
        INSERT INTO sessions ({", ".join(f'"{name}"' for name in _NEW_SESSION_COLUMNS)})
        SELECT {", ".join(f":{name}" for name in _NEW_SESSION_COLUMNS)}
        WHERE (SELECT count(*) FROM sessions WHERE "user" = :user AND phase = ANY(:counted))
            < :limit
        RETURNING id, phase
    ), event AS (
        INSERT INTO session_events (session_id, type, phase, reason, message, data, created_at)
        SELECT id, :event_type, :event_phase, :event_reason, :event_message, :event_data,
            :created_at
        FROM created
    )
    SELECT pg_notify(:channel, CAST(id AS text) || ' ' || phase) FROM created
    """
).bindparams(
    *(bindparam(name, type_=VDISession.__table__.c[name].type) for name in _NEW_SESSION_COLUMNS),
    bindparam("counted", type_=ARRAY(String)),
    bindparam("limit", type_=Integer),
    bindparam("event_type", type_=SessionEvent.__table__.c.type.type),
    bindparam("event_phase", type_=SessionEvent.__table__.c.phase.type),
    bindparam("event_reason", type_=SessionEvent.__table__.c.reason.type),
    bindparam("event_message", type_=SessionEvent.__table__.c.message.type),
    bindparam("event_data", type_=SessionEvent.__table__.c.data.type),
    bindparam("channel", type_=String),
)


async def insert_new_session(
    db: AsyncSession,
    session: VDISession,
    event: Any,
    *,
    counted: Iterable[str],
    limit: int,
) -> bool:
    """Store `session` (transient, every column of _NEW_SESSION_COLUMNS set) with its first
    event (an EventDraft), and notify the reconciler at commit; False, storing nothing, when
    the user already has `limit` sessions in the `counted` phases."""
    values = {name: getattr(session, name) for name in _NEW_SESSION_COLUMNS}
    result = await db.execute(
        _INSERT_NEW_SESSION,
        {
            **values,
            "counted": list(counted),
            "limit": limit,
            "event_type": event.type,
            "event_phase": event.phase,
            "event_reason": event.reason,
            "event_message": event.message,
            "event_data": event.data,
            "channel": EVENTS_CHANNEL,
        },
    )
    return result.first() is not None


async def claim_idempotency_key(
    db: AsyncSession,
    *,
    token_id: uuid.UUID,
    key: str,
    request_hash: str,
    now: datetime,
    expired_before: datetime,
) -> IdempotencyKey | None:
    """Claim a key; None when it is already taken (then the caller reads it).

    A concurrent request with the same key waits here for the first one's transaction:
    it then sees the committed result, or claims the key if the first one rolled back.
    An expired key is claimed afresh.
    """
    statement = (
        insert(IdempotencyKey)
        .values(token_id=token_id, key=key, request_hash=request_hash, created_at=now)
        .on_conflict_do_update(
            index_elements=[IdempotencyKey.token_id, IdempotencyKey.key],
            set_={
                "request_hash": request_hash,
                "created_at": now,
                "session_id": None,
                "response_status": None,
                "response_body": None,
            },
            where=IdempotencyKey.created_at < expired_before,
        )
        .returning(IdempotencyKey.key)
    )
    claimed = (await db.execute(statement)).scalar_one_or_none()
    if claimed is not None:
        return None
    query = select(IdempotencyKey).where(
        IdempotencyKey.token_id == token_id, IdempotencyKey.key == key
    )
    return (await db.execute(query)).scalar_one()


async def record_idempotent_result(
    db: AsyncSession,
    *,
    token_id: uuid.UUID,
    key: str,
    session_id: uuid.UUID,
    status: int,
    body: dict[str, Any],
) -> None:
    await db.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.token_id == token_id, IdempotencyKey.key == key)
        .values(session_id=session_id, response_status=status, response_body=body)
    )


# The unchanged heartbeat (app.sessions.lane): one statement on a plain asyncpg connection,
# outside any transaction and outside the ORM (which was most of a heartbeat's CPU).
TOUCH_UNCHANGED = (
    "UPDATE sessions SET last_report_at = $3, "
    # a claimed warm session waiting for its route keeps its retry (lifecycle.next_check)
    "next_reconcile_at = CASE WHEN reason = 'WarmClaimed' AND running_at IS NULL "
    "THEN LEAST(next_reconcile_at, idle_deadline, expires_at, $4) "
    "ELSE LEAST(idle_deadline, expires_at, $4) END "
    "WHERE id = $1 AND phase = 'Running' AND report_digest = $2 "
    "RETURNING " + SHOWN_SQL
)


async def touch_unchanged(
    connection: asyncpg.Connection,
    session_id: uuid.UUID,
    digest: str,
    now: datetime,
    heartbeat_deadline: datetime,
) -> asyncpg.Record | None:
    """A heartbeat that says what the last report said, on a Running session: move its clock
    (last report, next deadline) and return the session's columns; None when it is not that
    case."""
    return await connection.fetchrow(TOUCH_UNCHANGED, session_id, digest, now, heartbeat_deadline)


WARM_CLAIM_TRIES = 10  # a member locked by a heartbeat or the reconciler is free in ms


WARM_CLAIM_PAUSE_S = 0.02


async def claim_warm_member(db: AsyncSession, template: str) -> VDISession | None:
    """The oldest ready member of `template`'s warm pool, locked for this transaction; one
    another transaction holds is skipped (SKIP LOCKED), so concurrent creates on any replica
    each get their own, or none.

    A ready member can also be locked for a moment by something that does not take it (its
    agent's heartbeat, the reconciler's claim of its due work). When every ready member is
    skipped but some are still members, the claim looks again a few times, briefly, so that
    a user is not given a cold start while a ready member waits; a member another create
    takes leaves the pool when that create commits, and the next look no longer sees it."""
    ready = (
        VDISession.template_name == template,
        VDISession.pool_member.is_(True),
        VDISession.phase == "Running",
    )
    query = (
        select(VDISession)
        .where(*ready)
        .order_by(VDISession.created_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    for _ in range(WARM_CLAIM_TRIES):
        member = (await db.execute(query)).scalar_one_or_none()
        if member is not None:
            return member
        waiting = select(VDISession.id).where(*ready).limit(1)  # committed, locked or not
        if (await db.execute(waiting)).first() is None:
            return None
        await asyncio.sleep(WARM_CLAIM_PAUSE_S)
    return None


# A claimed warm session whose route now exists: Running for its user from now, with its event
# and NOTIFY, in one statement; nothing when it is no longer waiting for its route.
_MARK_ROUTED = text(
    """
    WITH routed AS (
        UPDATE sessions SET reason = :reason, message = :message, running_at = :now,
            updated_at = :now,
            next_reconcile_at = LEAST(idle_deadline, expires_at,
                COALESCE(last_report_at, CAST(:now AS timestamptz)) + :heartbeat)
        WHERE id = :id AND phase = 'Running' AND reason = 'WarmClaimed'
        RETURNING *
    ), event AS (
        INSERT INTO session_events (session_id, type, phase, reason, message, data, created_at)
        SELECT id, 'PhaseChanged', phase, :reason, :message, CAST(:data AS jsonb), :now
        FROM routed
    ), notified AS (
        SELECT pg_notify(:channel, CAST(id AS text) || ' ' || phase) FROM routed
    )
    SELECT routed.* FROM routed, notified
    """
).bindparams(
    bindparam("now", type_=VDISession.__table__.c.created_at.type),
    bindparam("heartbeat", type_=Interval()),
)


async def mark_routed(
    db: AsyncSession,
    session_id: uuid.UUID,
    *,
    reason: str,
    message: str,
    now: datetime,
    heartbeat: timedelta,
) -> VDISession | None:
    """Record a claimed warm session routed (see _MARK_ROUTED); the session after it, or None."""
    statement = (
        select(VDISession).from_statement(_MARK_ROUTED).execution_options(populate_existing=True)
    )
    result = await db.execute(
        statement,
        {
            "id": session_id,
            "reason": reason,
            "message": message,
            "now": now,
            "heartbeat": heartbeat,
            "data": json_dumps({"from": "Running", "to": "Running", "warm": True}),
            "channel": EVENTS_CHANNEL,
        },
    )
    return result.scalar_one_or_none()


async def delete_idempotency_keys_before(db: AsyncSession, cutoff: datetime) -> int:
    result = await db.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


# What /metrics reads at each scrape, in one round trip: sessions by phase and reason (the
# Terminated, history, left out), the users' waits for capacity by resources, the reconciler's
# due work, and the warm pools' members by template and phase with each pool's size.
_METRICS_SNAPSHOT = text(
    """
    SELECT 'phase' AS part, phase AS a, COALESCE(reason, '') AS b, count(*) AS n, NULL AS at
    FROM sessions WHERE phase <> 'Terminated' GROUP BY phase, reason
    UNION ALL
    SELECT 'waiting', CAST(capacity_wait -> 'resources' AS text), '', count(*),
           min(CAST(capacity_wait ->> 'since' AS timestamptz))
    FROM sessions
    WHERE capacity_wait IS NOT NULL AND NOT pool_member AND phase IN ('Provisioning', 'Starting')
    GROUP BY capacity_wait -> 'resources'
    UNION ALL
    SELECT 'due', '', '', count(*), min(next_reconcile_at)
    FROM sessions WHERE next_reconcile_at <= now()
    UNION ALL
    SELECT 'pool', template_name, phase, count(*), NULL
    FROM sessions WHERE pool_member AND phase IN ('Pending', 'Provisioning', 'Starting', 'Running')
    GROUP BY template_name, phase
    UNION ALL
    SELECT 'pool_size', name, '', warm_pool, NULL FROM templates WHERE warm_pool > 0
    """
)


async def metrics_snapshot(db: AsyncSession) -> list[tuple[str, str, str, int, datetime | None]]:
    """The rows of `_METRICS_SNAPSHOT`: (part, a, b, count, instant)."""
    rows = await db.execute(_METRICS_SNAPSHOT)
    return [(r.part, r.a, r.b, int(r.n), r.at) for r in rows]
