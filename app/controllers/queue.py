"""The work queue: Postgres rows are the queue (DESIGN "Reconciler").

A replica claims due sessions with `FOR UPDATE SKIP LOCKED`, stamps a claim token and a lease,
and commits; it talks to the cluster holding no transaction, then writes the result in a new
short transaction, only while the session is still in the phase it was claimed in. A replica
that dies leaves rows that fall due again when their lease ends."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.cluster.kube import ClusterError
from app.config import Settings
from app.models import VDISession
from app.models._types import utcnow
from app.sessions import lifecycle
from app.sessions.records import SessionRef
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog, workqueue
from app.sessions.schemas import Phase
from app.sessions.service import reschedule

log = structlog.get_logger("vdi.reconciler")

MAX_BACKOFF_S = 30.0

# The result of working on a claimed session, written under its row lock: it may return an
# explicit next due time; otherwise the phase's deadline is used.
Apply = Callable[[AsyncSession, VDISession, datetime], Awaitable[datetime | None]]


@dataclass(frozen=True)
class Claim:
    session: VDISession
    token: uuid.UUID
    # A session to provision: the user's earlier session whose pod may still exist (it holds
    # the user's home volume and host name), found with the claim.
    previous: SessionRef | None = None


class WorkQueue:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        wake: asyncio.Event,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.wake = wake  # set: there may be work due now
        self.capacity_changed = asyncio.Event()  # set: a wait for capacity began or ended

    async def claim(self, limit: int, *, pool_busy: int = 0) -> list[Claim]:
        """Up to `limit` due sessions, claimed; those Pending move to Provisioning. Warm pool
        members to provision only with the room users' sessions left, and at most
        `pool_concurrency` at once counting the `pool_busy` in flight: pool work yields."""
        now = utcnow()
        lease = timedelta(seconds=self.settings.reconcile_lease_s)
        claims = []
        async with self.sessionmaker() as db, db.begin():
            started = []
            due = await workqueue.claim_due(db, now=now, limit=limit)
            pool_room = min(limit - len(due), self.settings.pool_concurrency - pool_busy)
            if pool_room > 0:
                due += await workqueue.claim_pool_work(db, now=now, limit=pool_room)
            for session in due:
                token = uuid.uuid4()
                session.claim_token = token
                session.next_reconcile_at = now + lease
                if session.phase == Phase.pending.value:
                    session.claimed_at = now
                    event = lifecycle.transition(
                        session,
                        Phase.provisioning,
                        reason="Provisioning",
                        message="Creating the session's objects",
                        now=now,
                    )
                    started.append((session, [event]))
                claims.append(Claim(session, token))
            await eventlog.add_events_of(db, started, now)
            # The phases are flushed (add_events_of): a user's two sessions claimed together see
            # each other as Provisioning.
            provisioning = [
                c.session
                for c in claims
                if c.session.phase == Phase.provisioning and not c.session.pool_member
            ]
            holders = [p.value for p in lifecycle.POD_HOLDING_PHASES]
            earlier = await workqueue.earlier_sessions_of_users(db, provisioning, holders)
        return [dataclasses.replace(c, previous=earlier.get(c.session.id)) for c in claims]

    async def finish(self, claim: Claim, apply: Apply) -> None:
        """Write a result, if the session is still in the phase it was claimed in. Under the
        row lock, so two replicas that both worked on it (a lease ran out while the first was
        slow) record one transition: the second finds the phase moved and changes nothing."""
        async with self.sessionmaker() as db, db.begin():
            session = await repository.get(db, claim.session.id, for_update=True)
            if session is None or session.phase != claim.session.phase:
                return
            if claim.session.pool_member and not session.pool_member:
                return  # handed to a user since: what was worked out for a member is moot
            now = utcnow()
            if session.claim_token == claim.token:
                session.claim_token = None
            due = await apply(db, session, now)
            if due is None:
                reschedule(session, self.settings, now)
            else:
                session.next_reconcile_at = due

    async def move(
        self,
        db: AsyncSession,
        session: VDISession,
        target: Phase,
        reason: str,
        message: str,
        now: datetime,
    ) -> None:
        """Move a locked session to `target` with its event, if the lifecycle allows it."""
        if not lifecycle.can_transition(Phase(session.phase), target):
            return
        event = lifecycle.transition(session, target, reason=reason, message=message, now=now)
        await eventlog.add_events(db, session, [event], now)
        log.info("session moved", session_id=str(session.id), phase=target.value, reason=reason)
        if target is Phase.terminated and await workqueue.wake_waiting_for(db, session.user, now):
            self.wake.set()  # the user's next session was waiting for this pod to be gone

    async def next_due(self, *, new_pool_members: bool) -> datetime | None:
        async with self.sessionmaker() as db:
            return await workqueue.next_due(db, new_pool_members=new_pool_members)

    async def end_sessions_of_a_previous_run(self, reason: str, message: str) -> int:
        """An in-process cluster starts empty: the sessions a previous run had pods for (their
        processes went with it) end (Terminating with `reason`, then Terminated at once: no pod
        holds the user's home, so the user may start a new one right away)."""
        phases = [p.value for p in (Phase.provisioning, Phase.starting, Phase.running)]
        async with self.sessionmaker() as db, db.begin():
            now = utcnow()
            sessions = await workqueue.sessions_in_phases(db, phases)
            for session in sessions:
                await self.move(db, session, Phase.terminating, reason, message, now)
                session.next_reconcile_at = now
        if sessions:
            self.wake.set()
        return len(sessions)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_S, 0.2 * 2 ** min(attempts, 10)))


async def nothing(db: AsyncSession, session: VDISession, now: datetime) -> datetime | None:
    """No change: the session is due again at its phase's deadline."""
    return None


def retry_or_fail(error: ClusterError, fail_reason: str | None) -> Apply:
    """A permanent refusal fails the session (when `fail_reason`); anything else is retried
    with exponential backoff."""

    async def apply(db: AsyncSession, session: VDISession, now: datetime) -> datetime | None:
        if not error.temporary and fail_reason is not None:
            event = lifecycle.transition(
                session, Phase.failed, reason=fail_reason, message=str(error), now=now
            )
            await eventlog.add_events(db, session, [event], now)
            return None
        session.attempts += 1
        log.warning("cluster call failed; will retry", error=str(error), attempts=session.attempts)
        return now + backoff(session.attempts)

    return apply
