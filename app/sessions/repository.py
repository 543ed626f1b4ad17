"""Queries on sessions, session_events and idempotency_keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
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
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import distinct_on, insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import json_dumps
from app.models import IdempotencyKey, SessionEvent, Template, VDISession
from app.sessions.records import PodEventRow, PodFacts, ScheduledFact, SessionRef

EVENTS_CHANNEL = "vdi_session_events"
# Phases whose events mean "the reconciler has something to do now" (a create, a delete).
RECONCILER_PHASES = frozenset({"Pending", "Terminating"})


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


async def earlier_sessions_of_users(
    db: AsyncSession, sessions: Sequence[VDISession], phases: Iterable[str]
) -> dict[uuid.UUID, SessionRef]:
    """For each of `sessions` that has one: the id and phase of the oldest session of the same user
    created before it in one of `phases`. One query for a whole claim, not one per session."""
    if not sessions:
        return {}
    earlier = VDISession.__table__.alias("earlier")
    query = (
        select(VDISession.id, earlier.c.id.label("earlier_id"), earlier.c.phase)
        .join(
            earlier,
            (earlier.c.user == VDISession.user)
            & (earlier.c.id != VDISession.id)
            & (earlier.c.created_at <= VDISession.created_at),
        )
        .where(
            VDISession.id.in_([session.id for session in sessions]),
            earlier.c.phase.in_(list(phases)),
        )
        .order_by(VDISession.id, earlier.c.created_at)
        .ext(distinct_on(VDISession.id))
    )
    return {row.id: SessionRef(row.earlier_id, row.phase) for row in await db.execute(query)}


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
)
SHOWN_SQL = ", ".join(
    '"template_name" AS "template"' if name == "template_name" else f'"{name}"'
    for name in SHOWN_NAMES
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


async def count_by_phase(db: AsyncSession) -> dict[str, int]:
    rows = await db.execute(select(VDISession.phase, func.count()).group_by(VDISession.phase))
    return {phase: int(count) for phase, count in rows.all()}


async def add_events(
    db: AsyncSession, session: VDISession, drafts: Sequence[Any], now: datetime
) -> None:
    """Append events and NOTIFY listeners (delivered when the transaction commits)."""
    await add_events_of(db, [(session, drafts)], now)


async def add_events_of(
    db: AsyncSession, batch: Sequence[tuple[VDISession, Sequence[Any]]], now: datetime
) -> None:
    """`add_events` for several sessions at once: one flush and one NOTIFY statement for all
    (a claim of sixteen sessions was thirty-two round trips)."""
    batch = [(session, drafts) for session, drafts in batch if drafts]
    if not batch:
        return
    for session, drafts in batch:
        for draft in drafts:
            db.add(
                SessionEvent(
                    session_id=session.id,
                    type=draft.type,
                    phase=draft.phase,
                    reason=draft.reason,
                    message=draft.message,
                    data=draft.data,
                    created_at=now,
                )
            )
    await db.flush()
    for session, drafts in batch:
        if any(draft.type != "PhaseChanged" for draft in drafts):
            await _trim_details(db, session.id)
    # payload "<session id> <phase>": listeners can tell work for the reconciler from progress
    payloads = [f"{session.id} {session.phase}" for session, _drafts in batch]
    await db.execute(_NOTIFY_EACH, {"channel": EVENTS_CHANNEL, "payloads": payloads})


_NOTIFY_EACH = text(
    "SELECT pg_notify(:channel, payload) FROM unnest(:payloads) AS payload"
).bindparams(bindparam("channel", type_=String), bindparam("payloads", type_=ARRAY(String)))


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


MAX_DETAIL_EVENTS = 500  # per session; phase transitions are always kept


async def _trim_details(db: AsyncSession, session_id: uuid.UUID) -> None:
    """Cap a session's log: condition changes past the newest MAX_DETAIL_EVENTS go (oldest
    first), transitions stay. An index range scan on (session_id, id)."""
    newest_kept = (
        select(SessionEvent.id)
        .where(SessionEvent.session_id == session_id, SessionEvent.type == "ConditionChanged")
        .order_by(SessionEvent.id.desc())
        .offset(MAX_DETAIL_EVENTS - 1)
        .limit(1)
        .scalar_subquery()
    )
    await db.execute(
        delete(SessionEvent).where(
            SessionEvent.session_id == session_id,
            SessionEvent.type == "ConditionChanged",
            SessionEvent.id < newest_kept,
        )
    )


async def list_events(
    db: AsyncSession, session_id: uuid.UUID, *, after: int, limit: int
) -> list[SessionEvent]:
    query = (
        select(SessionEvent)
        .where(SessionEvent.session_id == session_id, SessionEvent.id > after)
        .order_by(SessionEvent.id)
        .limit(limit)
    )
    return list((await db.execute(query)).scalars())


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


async def claim_due(db: AsyncSession, *, now: datetime, limit: int) -> list[VDISession]:
    """Due sessions no other replica holds (SKIP LOCKED): the reconciler's work queue.

    Work on sessions that exist (deadlines, deletions) first, oldest due first. Then new
    sessions, served fairly: the templates take turns, so one template's rush never starves
    another's; within a template, oldest first (a user's share is bounded by the per-user
    limit). Each query reads through an index only as far as it needs, whatever the queue's
    length."""
    due = await _claim_existing(db, now, limit)
    if len(due) < limit:
        due += await _claim_new(db, now, limit - len(due))
    return due


async def _claim_existing(db: AsyncSession, now: datetime, limit: int) -> list[VDISession]:
    query = (
        select(VDISession)
        .where(VDISession.next_reconcile_at <= now, VDISession.phase != "Pending")
        .order_by(VDISession.next_reconcile_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await db.execute(query)).scalars())


async def _claim_new(db: AsyncSession, now: datetime, limit: int) -> list[VDISession]:
    # Up to `limit` oldest per template (an index range each), dealt round-robin.
    per_template = (
        select(VDISession.id, VDISession.next_reconcile_at)
        .where(
            VDISession.template_name == Template.name,
            VDISession.phase == "Pending",
            VDISession.next_reconcile_at <= now,
            VDISession.pool_member.is_(False),
        )
        .order_by(VDISession.next_reconcile_at)
        .limit(limit)
        .lateral()
    )
    dealt = (
        select(
            per_template.c.id,
            func.row_number()
            .over(partition_by=Template.name, order_by=per_template.c.next_reconcile_at)
            .label("turn"),
            per_template.c.next_reconcile_at,
        )
        .select_from(Template)
        .join(per_template, true())
        .subquery()
    )
    order = [
        row.id
        for row in await db.execute(
            select(dealt.c.id).order_by(dealt.c.turn, dealt.c.next_reconcile_at).limit(limit)
        )
    ]
    if not order:
        return []
    query = (
        select(VDISession)
        .where(
            VDISession.id.in_(order),
            VDISession.phase == "Pending",
            VDISession.next_reconcile_at <= now,
        )
        .with_for_update(skip_locked=True)
    )
    rank = {session_id: index for index, session_id in enumerate(order)}
    return sorted((await db.execute(query)).scalars(), key=lambda s: rank[s.id])


async def claim_pool_work(db: AsyncSession, *, now: datetime, limit: int) -> list[VDISession]:
    """New warm pool members to provision, oldest first: claimed only with the room users'
    sessions left (`claim_due` first)."""
    query = (
        select(VDISession)
        .where(
            VDISession.pool_member.is_(True),
            VDISession.phase == "Pending",
            VDISession.next_reconcile_at <= now,
        )
        .order_by(VDISession.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list((await db.execute(query)).scalars())


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


async def pool_members(db: AsyncSession) -> list[VDISession]:
    """Every live warm pool member (assigned to no one), oldest first."""
    query = (
        select(VDISession)
        .where(VDISession.pool_member.is_(True), VDISession.phase != "Terminated")
        .order_by(VDISession.created_at)
    )
    return list((await db.execute(query)).scalars())


async def lock_members(db: AsyncSession, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Of `ids`, those still warm pool members, locked for this transaction and re-read (their
    columns in the session refreshed). One a create is claiming right now (locked) or has
    claimed (no longer a member) is left out: a claim that committed is final, and the keeper
    must not end a user's session as a member."""
    if not ids:
        return set()
    query = (
        select(VDISession)
        .where(VDISession.id.in_(ids), VDISession.pool_member.is_(True))
        .order_by(VDISession.id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return {row.id for row in (await db.execute(query)).scalars()}


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


# Kubernetes events of session pods, appended once each (the unique source key: every replica
# forwards them), in the order they came, to live sessions only, in the phase each is in; one
# NOTIFY per session.
_ADD_POD_EVENTS = text(
    """
    WITH incoming AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:keys AS text[]), CAST(:reasons AS text[]),
            CAST(:messages AS text[]), CAST(:data AS text[])
        ) WITH ORDINALITY AS i(session_id, source_key, reason, message, data, n)
    ), added AS (
        INSERT INTO session_events
            (session_id, type, phase, reason, message, data, created_at, source_key)
        SELECT i.session_id, 'PodEvent', s.phase, i.reason, i.message, CAST(i.data AS jsonb), :now,
            i.source_key
        FROM incoming i JOIN sessions s ON s.id = i.session_id AND s.phase <> 'Terminated'
        ORDER BY i.n
        ON CONFLICT (session_id, source_key) WHERE source_key IS NOT NULL DO NOTHING
        RETURNING session_id, phase
    )
    SELECT pg_notify(:channel, CAST(session_id AS text) || ' ' || phase)
    FROM (SELECT DISTINCT session_id, phase FROM added) AS touched
    """
).bindparams(bindparam("now", type_=VDISession.__table__.c.created_at.type))


async def add_pod_events(
    db: AsyncSession,
    events: Sequence[PodEventRow],
    now: datetime,
) -> int:
    """Append pod events to their sessions' logs (each source key once); how many sessions
    got new ones."""
    if not events:
        return 0
    result = await db.execute(
        _ADD_POD_EVENTS,
        {
            "ids": [e.session_id for e in events],
            "keys": [e.source_key for e in events],
            "reasons": [e.reason[:64] for e in events],
            "messages": [e.message for e in events],
            "data": [json_dumps(e.data) for e in events],
            "now": now,
            "channel": EVENTS_CHANNEL,
        },
    )
    return len(result.all())


async def pod_facts(db: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PodFacts]:
    """Per session: its phase and its PodScheduled condition's (status, reason), read without
    locks (a relist compares them with what the pods say)."""
    rows = await db.execute(
        select(VDISession.id, VDISession.phase, VDISession.conditions).where(
            VDISession.id.in_(list(ids))
        )
    )
    facts: dict[uuid.UUID, PodFacts] = {}
    for session_id, phase, conditions in rows.all():
        scheduled = next(
            (
                ScheduledFact(c.get("status"), c.get("reason"))
                for c in conditions
                if c.get("type") == "PodScheduled"
            ),
            None,
        )
        facts[session_id] = PodFacts(phase, scheduled)
    return facts


async def wake_waiting_for(db: AsyncSession, user: str, now: datetime) -> int:
    """Make the user's sessions that wait for an earlier pod due now (that pod is gone)."""
    result = await db.execute(
        update(VDISession)
        .where(
            VDISession.user == user,
            VDISession.phase == "Provisioning",
            VDISession.reason == "WaitingForPreviousSession",
        )
        .values(next_reconcile_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def try_xact_lock(db: AsyncSession, key: int) -> bool:
    """Take a transaction-level advisory lock if no one holds it (any replica)."""
    result = await db.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": key})
    return bool(result.scalar_one())


async def sessions_in_phases(db: AsyncSession, phases: Iterable[str]) -> list[VDISession]:
    """Every session in `phases`, locked (few: the start-up of an in-process cluster)."""
    query = (
        select(VDISession)
        .where(VDISession.phase.in_(list(phases)))
        .order_by(VDISession.created_at)
        .with_for_update()
    )
    return list((await db.execute(query)).scalars())


async def live_session_ids(db: AsyncSession) -> set[uuid.UUID]:
    query = select(VDISession.id).where(VDISession.phase != "Terminated")
    return set((await db.execute(query)).scalars())


async def next_due(db: AsyncSession, *, new_pool_members: bool = True) -> datetime | None:
    """The earliest due time in the queue; without new warm pool members when
    `new_pool_members` is false (the pool's share is in use: a finishing member wakes the
    reconciler, no poll needed)."""
    query = select(func.min(VDISession.next_reconcile_at))
    if not new_pool_members:
        query = query.where(~(VDISession.pool_member & (VDISession.phase == "Pending")))
    return (await db.execute(query)).scalar_one_or_none()


async def delete_idempotency_keys_before(db: AsyncSession, cutoff: datetime) -> int:
    result = await db.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)
