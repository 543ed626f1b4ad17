"""HTTP routes of a session's shares and viewers, and its agent's access document."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from app.auth.deps import AUTH_ERRORS, SessionsConnect, SessionsRead, SessionsWrite
from app.db import DbSession
from app.errors import problem_responses
from app.sessions import service as sessions
from app.sessions.router import AgentOfSession, AppSettings
from app.sessions.schemas import VIEWER_ID_PATTERN, Recording, Viewer, recording_document
from app.shares import service
from app.shares.schemas import (
    AccessDocument,
    CreatedShare,
    RecordingCreate,
    Share,
    ShareCreate,
    ShareList,
)

router = APIRouter(prefix="/v1/sessions", tags=["shares"])

MAX_WAIT_S = 55
# without the event hub's LISTEN (reconnecting), a waiting agent looks again this often
POLL_S = 2.0


@router.post(
    "/{session_id}/shares",
    name="create_session_share",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(
        *AUTH_ERRORS,
        sessions.SessionNotFound,
        sessions.SessionEnded,
        service.SharingNotAllowed,
        service.SessionNotReady,
        service.TooManyShares,
    ),
    summary="Share the desktop: a link that opens it as a viewer or a collaborator",
    description="The answer's `token` and `link` are shown only here. A `viewer` sees and "
    "hears the desktop and has no keyboard, mouse, clipboard or files; a `collaborator`'s "
    "keyboard and mouse reach it (a template with `sharing: collab`). The session's agent "
    "adds the token to Selkies within a second; it stops working at `expires_at` (never "
    "after the session) or when revoked.",
)
async def create_session_share(
    session_id: uuid.UUID,
    body: ShareCreate,
    db: DbSession,
    principal: SessionsConnect,
    settings: AppSettings,
    response: Response,
) -> CreatedShare:
    response.headers["Cache-Control"] = "no-store"
    created = await service.create_share(db, settings, session_id, body, principal.name)
    response.headers["Location"] = f"/v1/sessions/{session_id}/shares/{created.id}"
    return created


@router.get(
    "/{session_id}/shares",
    name="list_session_shares",
    responses=problem_responses(*AUTH_ERRORS, sessions.SessionNotFound),
    summary="The session's shares, newest first (without their tokens)",
)
async def list_session_shares(session_id: uuid.UUID, db: DbSession, _: SessionsRead) -> ShareList:
    return ShareList(items=await service.list_shares(db, session_id))


@router.delete(
    "/{session_id}/shares/{share_id}",
    name="revoke_session_share",
    responses=problem_responses(*AUTH_ERRORS, sessions.SessionNotFound, service.ShareNotFound),
    summary="Revoke a share: its token opens nothing more and its pages are disconnected",
    description="Again on a revoked share is not an error. The agent drops the token from "
    "Selkies' table within a second, which disconnects the pages that opened with it.",
)
async def revoke_session_share(
    session_id: uuid.UUID, share_id: uuid.UUID, db: DbSession, principal: SessionsConnect
) -> Share:
    return await service.revoke_share(db, session_id, share_id, principal.name)


ViewerId = Annotated[str, Path(pattern=VIEWER_ID_PATTERN, max_length=100)]


@router.delete(
    "/{session_id}/viewers/{viewer_id}",
    name="disconnect_session_viewer",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(*AUTH_ERRORS, sessions.SessionNotFound, service.ViewerNotFound),
    summary="Disconnect a page connected to the desktop (one of the session's `viewers`)",
    description="Accepted: the session's agent disconnects it within a second or two, and a "
    "`ViewerDisconnected` event follows. Its share, if any, still works: revoke the share to "
    "keep it out.",
)
async def disconnect_session_viewer(
    session_id: uuid.UUID, viewer_id: ViewerId, db: DbSession, principal: SessionsConnect
) -> Viewer:
    viewer = await service.disconnect_viewer(db, session_id, viewer_id, principal.name)
    return Viewer.model_validate(viewer)


RECORDING_ERRORS = (
    sessions.SessionNotFound,
    sessions.SessionEnded,
    service.RecordingNotAllowed,
    service.RecordingInProgress,
    service.SessionNotReady,
)


@router.post(
    "/{session_id}/recording",
    name="start_session_recording",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(*AUTH_ERRORS, *RECORDING_ERRORS),
    summary="Record the desktop (a template with `recording: true`)",
    description="Accepted: the session's agent starts Selkies' recording within a second or "
    "two: an MP4 (H.264, with the sound where the template streams it) in the user's "
    "~/Desktop. The session's `recording` says when it is `active` and where; a "
    "`desktop.recording.start` audit record names the file.",
)
async def start_session_recording(
    session_id: uuid.UUID,
    db: DbSession,
    principal: SessionsWrite,
    body: RecordingCreate | None = None,
) -> Recording:
    name = body.name if body is not None else None
    asked = await service.start_recording(db, session_id, name, principal.name)
    return Recording.model_validate(recording_document(asked))


@router.delete(
    "/{session_id}/recording",
    name="stop_session_recording",
    status_code=status.HTTP_202_ACCEPTED,
    responses=problem_responses(*AUTH_ERRORS, sessions.SessionNotFound, service.RecordingNotFound),
    summary="Stop recording the desktop (again is not an error)",
    description="Accepted: the agent stops Selkies' recording; the session's `recording` then "
    "says the file's size and duration, and a `desktop.recording.stop` audit record too.",
)
async def stop_session_recording(
    session_id: uuid.UUID, db: DbSession, principal: SessionsWrite
) -> Recording:
    asked = await service.stop_recording(db, session_id, principal.name)
    return Recording.model_validate(recording_document(asked))


@router.get(
    "/{session_id}/access",
    name="get_session_access",
    responses=problem_responses(*AUTH_ERRORS, sessions.SessionNotFound),
    summary="What the session's agent keeps Selkies to (authorized by its agent token)",
    description="The live shares' tokens and the pages to disconnect. With `known` (the "
    "`digest` the agent holds) and `wait_s`, answered when the document changes or after "
    "`wait_s` (a long poll).",
)
async def get_session_access(
    session_id: AgentOfSession,
    request: Request,
    settings: AppSettings,
    response: Response,
    known: Annotated[str | None, Query(max_length=64, pattern=r"^[0-9a-f]+$")] = None,
    wait_s: Annotated[float, Query(ge=0, le=MAX_WAIT_S)] = 0,
) -> AccessDocument:
    response.headers["Cache-Control"] = "no-store"
    state = request.app.state
    deadline = time.monotonic() + wait_s
    with state.event_hub.subscribe(session_id) as wake:
        while True:
            wake.clear()
            async with state.sessionmaker() as db:
                document = await service.access(db, settings, session_id)
            left = deadline - time.monotonic()
            if document.digest != known or left <= 0 or await request.is_disconnected():
                return document
            timeout = left if state.event_hub.listening else min(left, POLL_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await wake.wait()
