"""The session event log: events appended with their NOTIFY (delivered at commit), the
detail events trimmed per session, read in order, and the pods' Kubernetes events kept once
each."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    bindparam,
    delete,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import json_dumps
from app.models import SessionEvent, VDISession
from app.sessions.records import PodEventRow

EVENTS_CHANNEL = "vdi_session_events"

# Told of every phase change appended (its target phase and reason), after it is queued for the
# transaction: the process's metrics count failures by reason with it (app.main registers one
# while an app runs). A rolled-back transaction was counted still: failures are rare, retried
# writes rarer.
PhaseObserver = Callable[[str, str | None], None]
phase_observers: list[PhaseObserver] = []


async def add_events(
    db: AsyncSession, session: VDISession, drafts: Sequence[Any], now: datetime
) -> None:
    """Append events and NOTIFY listeners (delivered when the transaction commits)."""
    await add_events_of(db, [(session, drafts)], now)


async def add_events_of(
    db: AsyncSession, batch: Sequence[tuple[VDISession, Sequence[Any]]], now: datetime
) -> None:
    """`add_events` for several sessions at once: one statement appends them all and NOTIFYs
    (a claim of sixteen sessions was thirty-two round trips).

    The caller holds each session's row lock, so a session's events are appended one
    transaction at a time, in id order. Each is stamped no earlier than the session's own last
    change (`updated_at`, which the lifecycle keeps in order) nor than the session's previous
    event: `created_at` never decreases along a session's log, whatever clock the caller read
    and when."""
    batch = [(session, drafts) for session, drafts in batch if drafts]
    if not batch:
        return
    rows = [
        (session, draft, max(now, session.updated_at))
        for session, drafts in batch
        for draft in drafts
    ]
    # payload "<session id> <phase>": listeners can tell work for the reconciler from progress
    payloads = [f"{session.id} {session.phase}" for session, _drafts in batch]
    await db.execute(
        _APPEND,
        {
            "ids": [session.id for session, _draft, _at in rows],
            "types": [draft.type for _session, draft, _at in rows],
            "phases": [draft.phase for _session, draft, _at in rows],
            "reasons": [draft.reason for _session, draft, _at in rows],
            "messages": [draft.message for _session, draft, _at in rows],
            "data": [json_dumps(draft.data) for _session, draft, _at in rows],
            "ats": [at for _session, _draft, at in rows],
            "channel": EVENTS_CHANNEL,
            "payloads": payloads,
        },
    )
    for session, drafts in batch:
        if any(draft.type != "PhaseChanged" for draft in drafts):
            await _trim_details(db, session.id)
    for _session, draft, _at in rows:
        if draft.type == "PhaseChanged":
            for observer in phase_observers:
                observer(draft.phase, draft.reason)


# The session's previous event: the (session_id, id) index's last entry for it.
_AFTER_PREVIOUS = """GREATEST({at}, (
            SELECT e.created_at FROM session_events e WHERE e.session_id = {session}
            ORDER BY e.id DESC LIMIT 1))"""

_APPEND = text(
    f"""
    WITH incoming AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:types AS text[]), CAST(:phases AS text[]),
            CAST(:reasons AS text[]), CAST(:messages AS text[]), CAST(:data AS text[]),
            CAST(:ats AS timestamptz[])
        ) WITH ORDINALITY AS i(session_id, type, phase, reason, message, data, at, n)
    ), added AS (
        INSERT INTO session_events (session_id, type, phase, reason, message, data, created_at)
        SELECT i.session_id, i.type, i.phase, i.reason, i.message, CAST(i.data AS jsonb),
            {_AFTER_PREVIOUS.format(at="i.at", session="i.session_id")}
        FROM incoming i
        ORDER BY i.n
        RETURNING id
    )
    SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload
    """
)


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


# Kubernetes events of session pods, appended once each (the unique source key: every replica
# forwards them), in the order they came, to live sessions only, in the phase each is in when
# the event is stored; one NOTIFY per session. The sessions are locked first (_LOCK_FOR_EVENTS),
# as every writer of a session's log does: this statement, started after the lock is held,
# sees the phase and the last event that the previous holder committed (a pod event stored
# while a report moved the session to Running said Starting, and came after that Running).
_LOCK_FOR_EVENTS = text(
    """
    SELECT id FROM sessions WHERE id = ANY(CAST(:ids AS uuid[])) AND phase <> 'Terminated'
    ORDER BY id FOR NO KEY UPDATE
    """
)
_ADD_POD_EVENTS = text(
    f"""
    WITH incoming AS (
        SELECT * FROM unnest(
            CAST(:ids AS uuid[]), CAST(:keys AS text[]), CAST(:reasons AS text[]),
            CAST(:messages AS text[]), CAST(:data AS text[])
        ) WITH ORDINALITY AS i(session_id, source_key, reason, message, data, n)
    ), added AS (
        INSERT INTO session_events
            (session_id, type, phase, reason, message, data, created_at, source_key)
        SELECT i.session_id, 'PodEvent', s.phase, i.reason, i.message, CAST(i.data AS jsonb),
            {_AFTER_PREVIOUS.format(at="GREATEST(:now, s.updated_at)", session="i.session_id")},
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
    ids = [e.session_id for e in events]
    await db.execute(_LOCK_FOR_EVENTS, {"ids": sorted(set(ids))})
    result = await db.execute(
        _ADD_POD_EVENTS,
        {
            "ids": ids,
            "keys": [e.source_key for e in events],
            "reasons": [e.reason[:64] for e in events],
            "messages": [e.message for e in events],
            "data": [json_dumps(e.data) for e in events],
            "now": now,
            "channel": EVENTS_CHANNEL,
        },
    )
    return len(result.all())
