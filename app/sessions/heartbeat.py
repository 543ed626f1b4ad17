"""An agent's health report, decided once (DESIGN "Agent callback").

The heartbeat lane (`lane.py`, ahead of the framework) admits a report: well-formed, with the
session's agent token, within the rate limit. It tries the common case, a Running session
whose last report meant the same: one autocommitted UPDATE of its clock (`touch`), answered
there. Any other admitted report is handed to the route with its `Admitted` record, and the
route folds it in (`fold`: a transaction under the row lock), without parsing, authorizing,
counting or touching it again. A report the lane did not admit (a bad token or body, a
limited rate, a database error) takes the route's whole way, with its problem answers.
Either way the outcome is a `Reported`: the document, what happened, and the session's time
to desktop when this report made it Running."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import on_direct_pool
from app.models._types import utcnow
from app.sessions import lifecycle
from app.sessions.lifecycle import ENDED_PHASES
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog
from app.sessions.schemas import HealthReport, Phase, dump_json, session_document
from app.sessions.service import SessionEnded, SessionNotStarted, get_locked, reschedule, to_schema

ADMITTED = "vdi_report_admitted"  # scope["state"] key: the lane's Admitted record


class Outcome(StrEnum):
    """What a report did (the `vdi_health_reports_total` label)."""

    running = "running"  # the session became Running
    failed = "failed"  # a failed check failed it
    updated = "updated"  # its conditions changed
    unchanged = "unchanged"  # only its clock moved


class Started(NamedTuple):
    """A user's session that this report made Running: its time to desktop."""

    template: str
    warm: bool
    seconds: float


@dataclass(frozen=True)
class Reported:
    document: bytes  # the session after the report, as JSON
    outcome: Outcome
    started: Started | None = None


@dataclass(frozen=True)
class Admitted:
    """A report the lane parsed, authorized and counted against the rate limit, and found
    not to be the common case (`touch` changed nothing)."""

    session_id: uuid.UUID
    report: HealthReport
    digest: str


def report_digest(report: HealthReport) -> str:
    """What in a report can change a session: each check's verdict and code, the encoder, the
    streamer, the fallback, any adaptation it carries (each an event), and who is connected.
    Figures (frames, jitter, CPU) and details refresh the conditions' messages only when one
    of these changes."""
    meaning = [
        sorted((c.name.value, c.ok, c.code) for c in report.checks),
        report.encoder,
        report.streamer,
        report.fallback,
        [a.model_dump(mode="json") for a in report.adaptations],
        # who is connected (each arrival and departure an event), not since when or from where
        None
        if report.viewers is None
        else sorted((v.id, v.role.value, str(v.share)) for v in report.viewers),
        None if report.recording is None else report.recording.model_dump(mode="json"),
    ]
    return hashlib.sha256(json.dumps(meaning).encode()).hexdigest()


async def touch(
    pool: asyncpg.Pool, settings: Settings, session_id: uuid.UUID, digest: str
) -> Reported | None:
    """The common case alone: a Running session and a report that means what the last one
    did. One autocommitted UPDATE of its clock; None when it is not that case."""
    now = utcnow()
    heartbeat_deadline = now + timedelta(seconds=settings.heartbeat_timeout_s)
    row = await on_direct_pool(
        pool,
        lambda connection: repository.touch_unchanged(
            connection, session_id, digest, now, heartbeat_deadline
        ),
    )
    if row is None:
        return None
    return Reported(dump_json(session_document(row)), Outcome.unchanged)


async def report(
    pool: asyncpg.Pool,
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    session_id: uuid.UUID,
    report: HealthReport,
    *,
    admitted: Admitted | None = None,
) -> Reported:
    """Fold a report in: the common case in one statement (unless the lane has tried it), any
    other in a transaction of its own."""
    if admitted is not None and admitted.session_id == session_id:
        digest = admitted.digest
    else:
        digest = report_digest(report)
        touched = await touch(pool, settings, session_id, digest)
        if touched is not None:
            return touched
    async with sessionmaker() as db, db.begin():
        return await fold(db, settings, session_id, report, digest, utcnow())


async def fold(
    db: AsyncSession,
    settings: Settings,
    session_id: uuid.UUID,
    report: HealthReport,
    digest: str,
    now: datetime,
) -> Reported:
    """A report that may change the session: under its row lock, through the lifecycle."""
    session = await get_locked(db, session_id)
    # read again under the lock: the wait for it may have been long (the reconciler's
    # provisioning), and what the holder wrote is later than a clock read before it
    now = lifecycle.instant(session, max(now, utcnow()))
    if Phase(session.phase) in ENDED_PHASES:
        # A Failed session keeps the evidence of its failure: no later report rewrites it.
        raise SessionEnded(
            f"Session {session.id} is {session.phase} ({session.reason}); reports are no longer "
            "accepted. The agent should stop."
        )
    if Phase(session.phase) not in (Phase.starting, Phase.running):
        raise SessionNotStarted(
            f"Session {session.id} is {session.phase}: its pod is not started yet, so no agent "
            "can report for it. Retry after the Retry-After delay."
        )
    before = session.phase
    events = lifecycle.apply_health_report(
        session,
        report,
        fallback_allowed=bool(session.template_spec.get("encoder_fallback", True)),
        now=now,
    )
    session.report_digest = digest
    reschedule(session, settings, now)
    await db.flush()
    await eventlog.add_events(db, session, events, now)
    started = None
    if session.phase != before and session.phase in (Phase.running, Phase.failed):
        outcome = Outcome(session.phase.lower())
        if outcome is Outcome.running and session.running_at is not None and session.user:
            # once a session, and not a warm pool member's check (no user yet)
            seconds = (session.running_at - session.created_at).total_seconds()
            started = Started(session.template_name, session.warm, seconds)
    else:
        outcome = Outcome.updated if events else Outcome.unchanged
    return Reported(to_schema(session).model_dump_json().encode(), outcome, started)
