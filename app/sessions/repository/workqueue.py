"""The queries the controllers make: the work queue (due sessions claimed with `SKIP LOCKED`,
new ones dealt round-robin between templates, the next due time), warm pool members, what a
pod relist compares, and the advisory locks that let one replica sweep or keep the pools."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import (
    func,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Template, VDISession
from app.sessions.records import PodFacts, ScheduledFact, SessionRef

# Phases whose events mean "the reconciler has something to do now" (a create, a delete).
RECONCILER_PHASES = frozenset({"Pending", "Terminating"})


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


# The users' sessions waiting for capacity, ranked within each set of resources short in the
# order their pods were made (the reconciler's claim), as kube-scheduler takes the pods of one
# priority in the order they came: each one's
# place and the number waiting, written only where they changed, on rows no one holds locked
# (a locked one is ranked on the next pass).
_RANK_CAPACITY_WAITS = text(
    """
    WITH waiting AS (
        SELECT id,
               row_number() OVER (
                   PARTITION BY capacity_wait -> 'resources'
                   ORDER BY claimed_at, created_at, id
               ) AS position,
               count(*) OVER (PARTITION BY capacity_wait -> 'resources') AS waiting
        FROM sessions
        WHERE capacity_wait IS NOT NULL AND NOT pool_member
          AND phase IN ('Provisioning', 'Starting')
    ),
    changed AS (
        SELECT s.id, w.position, w.waiting FROM sessions s JOIN waiting w ON w.id = s.id
        WHERE (s.capacity_wait ->> 'position') IS DISTINCT FROM w.position::text
           OR (s.capacity_wait ->> 'waiting') IS DISTINCT FROM w.waiting::text
        FOR UPDATE OF s SKIP LOCKED
    )
    UPDATE sessions s
    SET capacity_wait = s.capacity_wait
        || jsonb_build_object('position', changed.position, 'waiting', changed.waiting)
    FROM changed WHERE s.id = changed.id
    """
)


async def rank_capacity_waits(db: AsyncSession) -> int:
    """Rank the waiting sessions (see `_RANK_CAPACITY_WAITS`): how many changed."""
    result = await db.execute(_RANK_CAPACITY_WAITS)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def users_waiting_for_capacity(db: AsyncSession) -> int:
    """How many users' sessions wait for capacity (warm pool members yield to them)."""
    query = select(func.count()).where(
        VDISession.capacity_wait.is_not(None),
        VDISession.pool_member.is_(False),
        VDISession.phase.in_(["Provisioning", "Starting"]),
    )
    return int((await db.execute(query)).scalar_one())
