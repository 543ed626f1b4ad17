"""The rules of sharing a desktop: who may make a share of which role (the template's `sharing`
policy), its expiry and revocation, the pages connected and their disconnection, and the
access document the session's agent keeps Selkies' token table equal to."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.audit import service as audit
from app.config import Settings
from app.errors import AppError, Conflict, NotFound
from app.models import SessionShare, VDISession
from app.models._types import utcnow
from app.security import share_token
from app.sessions import service as sessions
from app.sessions.lifecycle import ENDED_PHASES, EventDraft
from app.sessions.repository import eventlog
from app.sessions.schemas import EventType, Phase, ShareRole, ViewerRole
from app.shares import repository
from app.shares.schemas import (
    AccessDocument,
    AccessToken,
    CreatedShare,
    RecordingAsked,
    Share,
    ShareCreate,
    ShareState,
)

# Selkies keeps the table in memory and compares a presented token with every entry
MAX_LIVE_SHARES = 64
# How long a disconnect request stays in the agent's document (it acts within seconds)
DISCONNECT_WINDOW_S = 120


class SharingNotAllowed(AppError):
    """The session's template does not allow this share (`sharing: off`, or `view` for a
    collaborator): change the template's `sharing`, or ask for a view-only share."""

    status, slug, title = 403, "sharing-not-allowed", "Sharing not allowed"


class ShareNotFound(NotFound):
    """No share of this session has this id: list them with GET .../shares."""

    slug, title = "share-not-found", "Share not found"


class ViewerNotFound(NotFound):
    """No page with this id is connected to the session now (as its agent last reported)."""

    slug, title = "viewer-not-found", "Viewer not found"


class TooManyShares(Conflict):
    """The session has as many live shares as allowed: revoke one first."""

    slug, title = "too-many-shares", "Too many shares"


class RecordingNotAllowed(AppError):
    """The session's template does not allow recording (`recording: false`)."""

    status, slug, title = 403, "recording-not-allowed", "Recording not allowed"


class RecordingInProgress(Conflict):
    """A recording is already asked for: stop it (DELETE .../recording) before another."""

    slug, title = "recording-in-progress", "Recording in progress"


class SessionNotReady(Conflict):
    """The session has no desktop to share yet (not Starting or Running): retry when it is."""

    slug, title = "session-not-ready", "Session not ready"
    sends_headers = ("Retry-After",)

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "2"})


def state_of(share: SessionShare, now: datetime) -> ShareState:
    if share.revoked_at is not None:
        return ShareState.revoked
    return ShareState.expired if share.expires_at <= now else ShareState.active


def to_schema(share: SessionShare, session: VDISession, now: datetime) -> Share:
    return Share(
        id=share.id,
        session_id=share.session_id,
        role=ShareRole(share.role),
        state=state_of(share, now),
        url=session.url,
        created_by=share.created_by,
        created_at=share.created_at,
        expires_at=share.expires_at,
        revoked_at=share.revoked_at,
    )


def _share_event(
    session: VDISession, share: SessionShare, kind: EventType, by: str | None
) -> EventDraft:
    verb = "made" if kind is EventType.share_created else "revoked"
    until = f", until {share.expires_at.isoformat()}" if kind is EventType.share_created else ""
    return EventDraft(
        type=kind.value,
        phase=session.phase,
        reason=share.role,
        message=f"A {share.role} share {verb} by {by or 'an unnamed token'}{until}",
        data={
            "share": str(share.id),
            "role": share.role,
            "expires_at": share.expires_at.isoformat(),
            "by": by,
        },
    )


async def create_share(
    db: AsyncSession, settings: Settings, session_id: uuid.UUID, body: ShareCreate, by: str
) -> CreatedShare:
    session = await sessions.get_locked(db, session_id)
    sharing = sessions.sharing(session)
    if sharing == "off" or (sharing == "view" and body.role is ShareRole.collaborator):
        allowed = "no shares" if sharing == "off" else "view-only shares only"
        raise SharingNotAllowed(
            f"Session {session_id}'s template {session.template_name!r} has sharing: {sharing} "
            f"({allowed}); set the template's sharing to "
            f"{'view or collab' if sharing == 'off' else 'collab'} for new sessions"
            + ("" if sharing == "off" else ", or ask for role viewer")
        )
    if Phase(session.phase) in ENDED_PHASES:
        sessions.refuse_if_ended(session, "share it")
    if Phase(session.phase) not in (Phase.starting, Phase.running):
        raise SessionNotReady(
            f"Session {session_id} is {session.phase}: its desktop does not exist yet. Retry "
            "when it is Starting or Running"
        )
    now = utcnow()
    live = await repository.live_for_session(db, session_id, now)
    if len(live) >= MAX_LIVE_SHARES:
        raise TooManyShares(
            f"Session {session_id} has {len(live)} live shares (at most {MAX_LIVE_SHARES}); "
            "revoke one with DELETE .../shares/{share_id}"
        )
    share = SessionShare(
        id=uuid.uuid4(),
        session_id=session_id,
        role=body.role.value,
        created_by=by,
        created_at=now,
        expires_at=min(now + timedelta(seconds=body.expires_in_s), session.expires_at),
    )
    db.add(share)
    await db.flush()
    event = _share_event(session, share, EventType.share_created, by)
    await eventlog.add_events(db, session, [event], now)
    audit.record(
        db,
        "share.create",
        actor=by,
        user=session.user,
        session_id=session.id,
        data={
            "share": str(share.id),
            "role": share.role,
            "expires_at": share.expires_at.isoformat(),
        },
        at=now,
    )
    token = share_token(settings.require_secret_key(), share.id)
    shown = to_schema(share, session, now)
    return CreatedShare(
        **shown.model_dump(),
        token=token,
        link=sessions.launch_url(session.url, token, sharing),
    )


async def list_shares(db: AsyncSession, session_id: uuid.UUID) -> list[Share]:
    session = await sessions.get_session(db, session_id)
    now = utcnow()
    return [to_schema(s, session, now) for s in await repository.list_for_session(db, session_id)]


async def revoke_share(
    db: AsyncSession, session_id: uuid.UUID, share_id: uuid.UUID, by: str
) -> Share:
    """Revoke it (again is no error): the agent drops its token from Selkies' table, which
    disconnects its pages."""
    session = await sessions.get_locked(db, session_id)
    share = await repository.get(db, session_id, share_id)
    if share is None:
        raise ShareNotFound(
            f"Session {session_id} has no share {share_id}; list them with GET "
            f"/v1/sessions/{session_id}/shares"
        )
    now = utcnow()
    if share.revoked_at is None:
        share.revoked_at = now
        await db.flush()
        event = _share_event(session, share, EventType.share_revoked, by)
        await eventlog.add_events(db, session, [event], now)
        audit.record(
            db,
            "share.revoke",
            actor=by,
            user=session.user,
            session_id=session.id,
            data={"share": str(share.id), "role": share.role},
            at=now,
        )
    return to_schema(share, session, now)


async def disconnect_viewer(
    db: AsyncSession, session_id: uuid.UUID, viewer_id: str, by: str
) -> dict[str, object]:
    """Ask the agent to disconnect a page (a ViewerDisconnectRequested event, which its access
    document carries); the ViewerDisconnected event follows when it has."""
    session = await sessions.get_locked(db, session_id)
    viewer = next((v for v in session.viewers or [] if v["id"] == viewer_id), None)
    if viewer is None or Phase(session.phase) in ENDED_PHASES:
        connected = ", ".join(v["id"] for v in session.viewers or []) or "none"
        raise ViewerNotFound(
            f"No page {viewer_id!r} is connected to session {session_id} (connected: "
            f"{connected}); the session's `viewers` lists them"
        )
    now = utcnow()
    event = EventDraft(
        type=EventType.viewer_disconnect_requested.value,
        phase=session.phase,
        reason=ViewerRole(viewer["role"]).value,
        message=f"Disconnecting page {viewer_id} ({viewer['role']}), asked by {by}",
        data={
            "viewer": viewer_id,
            "role": viewer["role"],
            "share": viewer.get("share"),
            "address": viewer.get("address"),
            "by": by,
        },
    )
    await eventlog.add_events(db, session, [event], now)
    audit.record(
        db,
        "viewer.disconnect",
        actor=by,
        user=session.user,
        session_id=session.id,
        data={k: v for k, v in event.data.items() if k != "by"},
        at=now,
    )
    return viewer


def _recording_event(session: VDISession, asked: dict[str, Any], by: str) -> EventDraft:
    wanted = bool(asked["wanted"])
    return EventDraft(
        type=EventType.recording_requested.value,
        phase=session.phase,
        reason="Start" if wanted else "Stop",
        message=f"{'Recording' if wanted else 'Stopping the recording'}, asked by {by}",
        data={"wanted": wanted, "request": asked["request"], "name": asked.get("name"), "by": by},
    )


async def start_recording(
    db: AsyncSession, session_id: uuid.UUID, name: str | None, by: str
) -> dict[str, Any]:
    session = await sessions.get_locked(db, session_id)
    if not session.template_spec.get("recording"):
        raise RecordingNotAllowed(
            f"Session {session_id}'s template {session.template_name!r} has recording: false; "
            "set recording: true on the template for new sessions"
        )
    if Phase(session.phase) in ENDED_PHASES:
        sessions.refuse_if_ended(session, "record it")
    if Phase(session.phase) is not Phase.running:
        raise SessionNotReady(f"Session {session_id} is {session.phase}: retry when it is Running")
    if session.recording and session.recording.get("wanted"):
        raise RecordingInProgress(
            f"Session {session_id} is already being recorded (request "
            f"{session.recording['request']}); stop it with DELETE "
            f"/v1/sessions/{session_id}/recording first"
        )
    now = utcnow()
    asked: dict[str, Any] = {
        "wanted": True,
        "request": str(uuid.uuid4()),
        "name": name,
        "requested_by": by,
        "requested_at": now.isoformat(),
        "active": None,
        "path": None,
        "size_bytes": None,
        "duration_s": None,
        "error": None,
    }
    await _ask_recording(db, session, asked, by, now)
    return asked


async def stop_recording(db: AsyncSession, session_id: uuid.UUID, by: str) -> dict[str, Any]:
    """Ask to stop (again, or with none asked for, changes nothing and is no error)."""
    session = await sessions.get_locked(db, session_id)
    asked = session.recording
    if asked is None or not asked.get("wanted"):
        if asked is None:
            raise RecordingNotFound(f"Session {session_id} was never recorded")
        return asked
    now = utcnow()
    asked = {**asked, "wanted": False, "requested_by": by, "requested_at": now.isoformat()}
    await _ask_recording(db, session, asked, by, now)
    return asked


async def _ask_recording(
    db: AsyncSession, session: VDISession, asked: dict[str, Any], by: str, now: datetime
) -> None:
    """Store the ask (the agent's access document carries it), its event and its record."""
    session.recording = asked
    session.updated_at = now
    await db.flush()
    await eventlog.add_events(db, session, [_recording_event(session, asked, by)], now)
    audit.record(
        db,
        "recording.start" if asked["wanted"] else "recording.stop",
        actor=by,
        user=session.user,
        session_id=session.id,
        data={"request": asked["request"], "name": asked.get("name")},
        at=now,
    )


class RecordingNotFound(NotFound):
    """The session was never recorded."""

    slug, title = "recording-not-found", "No recording"


async def access(db: AsyncSession, settings: Settings, session_id: uuid.UUID) -> AccessDocument:
    """The agent's document: the live shares' tokens (none once the session has ended) and
    the recent disconnect requests."""
    session = await sessions.get_session(db, session_id)
    now = utcnow()
    sharing = sessions.sharing(session)
    live = []
    if Phase(session.phase) not in ENDED_PHASES and sharing != "off":
        live = await repository.live_for_session(db, session_id, now)
    tokens = [
        AccessToken(
            share=share.id,
            # a collaborator share made before its template narrowed is still one (the
            # session keeps the template it was created with)
            role=ShareRole(share.role),
            token=share_token(settings.require_secret_key(), share.id),
            expires_at=share.expires_at,
        )
        for share in live
    ]
    since = now - timedelta(seconds=DISCONNECT_WINDOW_S)
    disconnect = await repository.disconnect_requests(
        db, session_id, EventType.viewer_disconnect_requested.value, since
    )
    asked = session.recording
    recording = (
        None
        if asked is None or Phase(session.phase) in ENDED_PHASES
        else RecordingAsked(
            wanted=asked["wanted"], request=asked["request"], name=asked.get("name")
        )
    )
    meaning = json.dumps(
        [
            sharing,
            [t.model_dump(mode="json") for t in tokens],
            disconnect,
            recording.model_dump(mode="json") if recording else None,
        ],
        sort_keys=True,
    )
    return AccessDocument(
        digest=hashlib.sha256(meaning.encode()).hexdigest()[:32],
        sharing=sharing,
        tokens=tokens,
        disconnect=disconnect,
        recording=recording,
    )
