"""Session rules: creation (limits, idempotency, secrets), reads, deletion, keepalive,
connection details and agent health reports. Services flush; the request commits."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import Field
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.config import Settings
from app.db import on_direct_pool
from app.errors import AppError, Conflict, NotFound, ValidationFailed
from app.models import SessionEvent, VDISession
from app.models._types import utcnow
from app.security import (
    SELKIES_BASIC_AUTH_USER,
    SecretBox,
    new_session_secrets,
    turn_credentials,
)
from app.sessions import lifecycle, warm
from app.sessions.events import EventHub, wait_for_wake
from app.sessions.lifecycle import COUNTED_PHASES, DELETED_PHASES, ENDED_PHASES
from app.sessions.repository import api as repository
from app.sessions.repository import eventlog
from app.sessions.schemas import (
    Connection,
    IceServer,
    Phase,
    Session,
    SessionCreate,
    TurnCredentials,
    capacity_wait_document,
    dump_json,
    recording_document,
    session_document,
    viewers_document,
)
from app.templates.schemas import DesktopPolicy, TemplateSpec, policy_document
from app.templates.service import find_template, template_spec

CURSOR_YEARS = (1970, 9998)


class SessionNotFound(NotFound):
    """No session has this id, or it is not one this token may see."""

    slug, title = "session-not-found", "Session not found"


class UserSessionLimit(Conflict):
    """The user already has as many live sessions as allowed: `live_session_ids` names them, to
    send the user to one or end one."""

    slug, title = "user-session-limit", "User has a live session"
    extensions = {
        "live_session_ids": (
            list[uuid.UUID],
            Field(description="The user's live sessions: send the user to one, or end one"),
        )
    }


class SessionEnded(Conflict):
    """The session has ended (or is ending): it takes no more keepalives, reports or TURN
    renewals."""

    slug, title = "session-ended", "Session has ended"


class SessionNotStarted(Conflict):
    """A report before the pod exists (the session is not Starting yet): retry shortly."""

    slug, title = "session-not-started", "Session has not started"
    sends_headers = ("Retry-After",)

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class IdempotencyKeyReused(AppError):
    """This `Idempotency-Key` was used before with another body: use a new key for a new
    request."""

    status, slug, title = 422, "idempotency-key-reused", "Idempotency key reused"


@dataclass(frozen=True)
class Replay:
    """A create request answered before: its first result, as it was."""

    status: int
    body: dict[str, Any]
    session_id: uuid.UUID


def to_schema(session: VDISession) -> Session:
    return Session(
        id=session.id,
        user=session.user,
        template=session.template_name,
        phase=Phase(session.phase),
        reason=session.reason,
        message=session.message,
        conditions=session.conditions,
        url=session.url,
        encoder=session.encoder,
        streamer=session.streamer,
        gpu=session.gpu,
        policy=DesktopPolicy.model_validate(policy_document(session.template_spec)),
        warm=session.warm,
        created_at=session.created_at,
        updated_at=session.updated_at,
        provisioned_at=session.provisioned_at,
        scheduled_at=session.scheduled_at,
        running_at=session.running_at,
        ended_at=session.ended_at,
        idle_deadline=session.idle_deadline,
        expires_at=session.expires_at,
        capacity_wait=capacity_wait_document(session.capacity_wait),
        viewers=viewers_document(session.viewers),
        recording=recording_document(session.recording),
    )


def deadlines(settings: Settings) -> lifecycle.Deadlines:
    return lifecycle.Deadlines(
        heartbeat_timeout_s=settings.heartbeat_timeout_s, failed_grace_s=settings.failed_grace_s
    )


def reschedule(session: VDISession, settings: Settings, now: datetime) -> None:
    """Put the session in the reconciler's queue for its next deadline (or take it out)."""
    session.next_reconcile_at = lifecycle.next_check(session, deadlines(settings), now)


def _request_hash(body: SessionCreate) -> str:
    return hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


async def get_locked(db: AsyncSession, session_id: uuid.UUID) -> VDISession:
    """The session, its row locked for the transaction (404 when there is none)."""
    return await _get(db, session_id, for_update=True)


async def _get(db: AsyncSession, session_id: uuid.UUID, *, for_update: bool = False) -> VDISession:
    session = await repository.get(db, session_id, for_update=for_update)
    if session is None:
        raise SessionNotFound(
            f"No session with id {session_id}; list sessions with GET /v1/sessions"
        )
    return session


def _refuse_user_name(settings: Settings, user: str) -> None:
    """User names become host names (`<user>.<base domain>`): no IDNA-encoded labels (they
    show as look-alike Unicode), none of the platform's own hosts."""
    if len(user) >= 4 and user[2:4] == "--":
        raise ValidationFailed(
            f"User name {user!r} has '--' in positions 3 and 4, which marks an IDNA (Punycode) "
            "label that browsers show as Unicode, possibly a look-alike of another name; choose "
            "a plain ASCII name",
            field="user",
        )
    if user in settings.reserved_users:
        raise ValidationFailed(
            f"User name {user!r} is reserved: `{user}.{settings.base_domain}` is one of the "
            "platform's own hosts (VDI_RESERVED_USER_NAMES); choose another name",
            field="user",
        )


async def create_session(
    db: AsyncSession,
    settings: Settings,
    body: SessionCreate,
    *,
    token_id: uuid.UUID,
    idempotency_key: str | None,
) -> VDISession | Replay:
    _refuse_user_name(settings, body.user)
    now = utcnow()
    if idempotency_key is not None:
        request_hash = _request_hash(body)
        existing = await repository.claim_idempotency_key(
            db,
            token_id=token_id,
            key=idempotency_key,
            request_hash=request_hash,
            now=now,
            expired_before=now - timedelta(seconds=settings.idempotency_ttl_s),
        )
        if existing is not None:
            if existing.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    "This Idempotency-Key was used with a different body; use a new key for a "
                    "new request",
                    errors=None,
                )
            assert existing.response_body is not None
            assert existing.session_id is not None
            return Replay(
                existing.response_status or 202, existing.response_body, existing.session_id
            )

    # A share lock: a template cannot be deleted under a session being created.
    template = await find_template(db, body.template, lock="share")
    if template is None:
        raise ValidationFailed(
            f"No template named '{body.template}'; list them with GET /v1/templates or create it "
            f"with PUT /v1/templates/{body.template}",
            field="template",
        )
    spec = template_spec(template)

    session: VDISession | None = None
    if spec.warm_pool == 0:  # built (its secrets sealed) before the user's lock is taken
        session, created = new_session_row(settings, template.name, spec, body.user, now)
    counted = [p.value for p in COUNTED_PHASES]
    await repository.lock_user(db, body.user)
    if session is None:
        session = await warm.claim(db, settings, body.user, template.name, spec, now)
        if session is None:  # none ready (or the user's earlier pod is not gone): cold
            session, created = new_session_row(settings, template.name, spec, body.user, now)
    if not session.warm and not await repository.insert_new_session(
        db, session, created, counted=counted, limit=settings.max_sessions_per_user
    ):
        active = await repository.active_sessions_of_user(db, body.user, counted)
        ids = [str(session_id) for session_id, _phase in active]
        failed = [phase for _session_id, phase in active if phase == Phase.failed.value]
        why = (
            f" ({len(failed)} of them Failed, still holding its pod and the user's home until "
            "deleted or its grace period ends)"
            if failed
            else ""
        )
        raise UserSessionLimit(
            f"User '{body.user}' already has {len(active)} live session(s) ({', '.join(ids)})"
            f"{why}; the limit is {settings.max_sessions_per_user}. Reuse it, or end it with "
            f"DELETE /v1/sessions/{ids[0]}",
            extra={"live_session_ids": ids},
        )
    if idempotency_key is not None:
        await repository.record_idempotent_result(
            db,
            token_id=token_id,
            key=idempotency_key,
            session_id=session.id,
            status=202,
            body=to_schema(session).model_dump(mode="json"),
        )
    return session


def new_session_row(
    settings: Settings,
    template: str,
    spec: TemplateSpec,
    user: str,
    now: datetime,
    *,
    member: bool = False,
) -> tuple[VDISession, lifecycle.EventDraft]:
    """A new Pending session and its first event; `member`: a warm pool member of the template,
    assigned to no one (no user, no URL; it lives until warm_max_age_s unless claimed)."""
    session_id = uuid.uuid4()
    lifetime_s = spec.warm_max_age_s if member else spec.max_lifetime_s
    # The pod's first TURN credential works through its start; the agent renews it after.
    secrets = new_session_secrets(
        settings.require_turn_secret(),
        session_id,
        now + timedelta(seconds=spec.start_timeout_s + settings.turn_credential_ttl_s),
    )
    message = "Accepted; waiting for the reconciler"
    if member:
        message = f"A warm pool member of '{template}': provisioned and checked for no one yet"
    session = VDISession(
        id=session_id,
        user=user,
        template_name=template,
        template_spec=spec.model_dump(mode="json"),
        # A local desktop's address is known once its port is chosen (at Starting).
        url=f"https://{user}.{settings.base_domain}/"
        if user and settings.cluster != "local"
        else "",
        phase=Phase.pending.value,
        reason="Created",
        message=message,
        conditions=lifecycle.initial_conditions(spec.gpu, now),
        gpu=spec.gpu,
        secrets_encrypted=SecretBox(settings.require_secret_key()).seal(secrets),
        created_at=now,
        updated_at=now,
        # a member is kept alive by no one: only its age ends it
        idle_deadline=now + timedelta(seconds=lifetime_s if member else spec.idle_timeout_s),
        expires_at=now + timedelta(seconds=lifetime_s),
        next_reconcile_at=now,
        attempts=0,
        force_delete=False,
        warm=False,
        pool_member=member,
    )
    created = lifecycle.EventDraft(
        type="PhaseChanged",
        phase=Phase.pending.value,
        reason="Created",
        message=f"Warm pool member of template '{template}'"
        if member
        else f"Session for '{user}' from template '{template}'",
        data={"from": None, "to": Phase.pending.value},
    )
    return session, created


async def get_session(db: AsyncSession, session_id: uuid.UUID) -> VDISession:
    return await _get(db, session_id)


def encode_cursor(created_at: datetime, session_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(session_id)])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, session_id = json.loads(base64.urlsafe_b64decode(padded))
        moment = datetime.fromisoformat(created_at)
        # Ours are aware and in UTC; a forged one may overflow on conversion or lie outside
        # what Postgres stores.
        if moment.tzinfo is None:
            raise ValueError("naive")
        moment = moment.astimezone(UTC)
        if not CURSOR_YEARS[0] <= moment.year <= CURSOR_YEARS[1]:
            raise ValueError("out of range")
        return moment, uuid.UUID(session_id)
    except (ValueError, TypeError, OverflowError, binascii.Error):
        raise ValidationFailed(
            "Not a cursor this API issued; pass `next_cursor` from the previous page as it is",
            field="cursor",
            location="query",
        ) from None


async def list_sessions(
    pool: asyncpg.Pool,
    *,
    user: str | None,
    phase: Phase | None,
    template: str | None,
    limit: int,
    cursor: str | None,
) -> bytes:
    """A `SessionPage` as JSON, read on the direct pool."""
    after = decode_cursor(cursor) if cursor else None
    rows = await on_direct_pool(
        pool,
        lambda connection: repository.list_page(
            connection,
            user=user,
            phase=phase.value if phase else None,
            template=template,
            after=after,
            limit=limit + 1,
        ),
    )
    next_cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        next_cursor = encode_cursor(last["created_at"], last["id"])
    items = [session_document(row) for row in rows[:limit]]
    return dump_json({"items": items, "next_cursor": next_cursor})


async def delete_session(
    db: AsyncSession, settings: Settings, session_id: uuid.UUID, *, force: bool = False
) -> VDISession:
    """Ask for the session's end; on an ended session this changes nothing and is no error.
    `force`: end it even if the cluster refuses to delete its objects (the orphan sweep retries)."""
    session = await _get(db, session_id, for_update=True)
    now = utcnow()
    if Phase(session.phase) in DELETED_PHASES:
        if force and session.phase == Phase.terminating.value and not session.force_delete:
            session.force_delete = True
            reschedule(session, settings, now)
            await db.flush()
        return session
    message = "Deletion requested" + (" (forced)" if force else "")
    event = lifecycle.transition(
        session, Phase.terminating, reason="DeleteRequested", message=message, now=now
    )
    session.force_delete = force
    reschedule(session, settings, now)
    await eventlog.add_events(db, session, [event], now)
    return session


def refuse_if_ended(session: VDISession, action: str) -> None:
    if Phase(session.phase) in ENDED_PHASES:
        raise SessionEnded(
            f"Session {session.id} is {session.phase} ({session.reason}); cannot {action}. "
            "Create a new session with POST /v1/sessions"
        )


async def keepalive(db: AsyncSession, settings: Settings, session_id: uuid.UUID) -> VDISession:
    session = await _get(db, session_id, for_update=True)
    refuse_if_ended(session, "keep it alive")
    now = utcnow()
    idle_timeout_s = int(session.template_spec["idle_timeout_s"])
    mode = lifecycle.idle_mode(session)
    # idle: viewers counts no keepalive; idle: both, none while a page keeps it alive anyway
    if mode == "keepalive" or (mode == "both" and not session.viewers):
        session.idle_deadline = min(now + timedelta(seconds=idle_timeout_s), session.expires_at)
    session.updated_at = now
    reschedule(session, settings, now)
    await db.flush()
    return session


def ice_servers(
    settings: Settings, session_id: uuid.UUID, turn_username: str, turn_password: str
) -> list[IceServer]:
    if not settings.turn_enabled:
        return []  # a local desktop without VDI_TURN_HOST: host candidates only
    host, port = settings.turn_host_for(session_id), settings.turn_port
    return [
        IceServer(urls=[f"stun:{host}:{port}"]),
        IceServer(
            urls=[f"turn:{host}:{port}?transport=udp"],
            username=turn_username,
            credential=turn_password,
        ),
    ]


def fresh_turn_credentials(settings: Settings, session: VDISession) -> TurnCredentials:
    """Credentials that work for `turn_credential_ttl_s` from now: short-lived, so a credential
    copied out of a session stops opening relays soon after the session ends."""
    ttl_s = settings.turn_credential_ttl_s
    expires_at = utcnow() + timedelta(seconds=ttl_s)
    username, password = turn_credentials(settings.require_turn_secret(), session.id, expires_at)
    return TurnCredentials(
        username=username,
        password=password,
        expires_at=expires_at,
        ttl_s=ttl_s,
        ice_servers=ice_servers(settings, session.id, username, password),
    )


async def connection(db: AsyncSession, settings: Settings, session_id: uuid.UUID) -> Connection:
    session = await _get(db, session_id)
    refuse_if_ended(session, "connect to it")
    secrets = SecretBox(settings.require_secret_key()).open(session.secrets_encrypted)
    return Connection(
        url=session.url,
        username=SELKIES_BASIC_AUTH_USER,
        password=secrets.password,
        ice_servers=fresh_turn_credentials(settings, session).ice_servers,
        launch_url=launch_url(session.url, secrets.password, sharing(session)),
    )


def sharing(session: VDISession) -> str:
    """The session's `sharing` policy (its template's when it was created)."""
    return str(policy_document(session.template_spec)["sharing"])


def launch_url(url: str, token: str, sharing: str) -> str:
    """Where a page opens with `token`: in secure mode (a template that shares) the token in
    the URL's fragment, where Selkies' page takes it from and no server or log sees it."""
    return url if sharing == "off" else f"{url.split('#', 1)[0]}#token={token}"


async def turn_for_agent(
    db: AsyncSession, settings: Settings, session_id: uuid.UUID
) -> TurnCredentials:
    """The agent's renewal: fresh credentials while the session is live, none after."""
    session = await _get(db, session_id)
    refuse_if_ended(session, "renew its TURN credentials")
    return fresh_turn_credentials(settings, session)


async def list_events(
    db: AsyncSession, session_id: uuid.UUID, *, after: int, limit: int
) -> list[SessionEvent]:
    await _get(db, session_id)
    return await eventlog.list_events(db, session_id, after=after, limit=limit)


async def metrics_snapshot(db: AsyncSession) -> list[tuple[str, str, str, int, datetime | None]]:
    """What /metrics reads from the database (sessions by phase and reason, waits for
    capacity, due work, warm pools)."""
    return await repository.metrics_snapshot(db)


POLL_INTERVAL_S = 5.0  # only while the hub's listener is down
SAFETY_INTERVAL_S = 300.0  # while it listens: a rare re-read, in case a notification was lost
STREAM_BATCH = 500


async def follow_events(
    sessionmaker: async_sessionmaker[AsyncSession],
    hub: EventHub,
    session_id: uuid.UUID,
    *,
    after: int,
    closed: asyncio.Event | None = None,
) -> AsyncIterator[SessionEvent]:
    """Yield the session's events after `after`, then new ones as they commit, until it is
    Terminated or `closed` is set (its token revoked). Each read is its own short transaction;
    while waiting nothing is held, and with the hub listening nothing is polled either."""
    last_id = after
    with hub.subscribe(session_id) as wake:  # subscribe before reading: no gap
        while closed is None or not closed.is_set():
            async with sessionmaker() as db:
                events = await eventlog.list_events(
                    db, session_id, after=last_id, limit=STREAM_BATCH
                )
                phase = await repository.get_phase(db, session_id)
            for event in events:
                last_id = event.id
                yield event
            if len(events) == STREAM_BATCH:
                continue
            if phase is None or phase == Phase.terminated.value:
                return
            interval = SAFETY_INTERVAL_S if hub.listening else POLL_INTERVAL_S
            await wait_for_wake(wake, interval, closed)
