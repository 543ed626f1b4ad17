"""Wire models of the shares, the viewers and the agent's access document."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from app.sessions.schemas import OUT, RECORDING_NAME_PATTERN, ShareRole

MAX_EXPIRES_IN_S = 7 * 86400


class ShareCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: ShareRole = Field(
        description="`viewer`: sees and hears the desktop, no keyboard, mouse, clipboard or "
        "files; `collaborator`: its keyboard and mouse reach the desktop too (a template with "
        "`sharing: collab`)"
    )
    expires_in_s: int = Field(
        default=3600,
        ge=60,
        le=MAX_EXPIRES_IN_S,
        description="Seconds until the share stops working (never past the session's end)",
    )


class ShareState(StrEnum):
    active = "active"
    expired = "expired"
    revoked = "revoked"


class Share(BaseModel):
    """A share of the desktop, without its token (shown only when it is made)."""

    model_config = OUT

    id: uuid.UUID
    session_id: uuid.UUID
    role: ShareRole
    state: ShareState
    url: str = Field(description="The desktop's address; the share's page opens it with its token")
    created_by: str | None = Field(description="The name of the API token that made it")
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class CreatedShare(Share):
    """A share as made: with its token and the link that opens the desktop with it."""

    token: str = Field(
        description="Opens the desktop with the share's role; shown only here (make another "
        "share rather than storing it)"
    )
    link: str = Field(
        description="`url` with the token in its fragment (`#token=`): send this to the viewer"
    )


class ShareList(BaseModel):
    model_config = OUT

    items: list[Share] = Field(description="Newest first, revoked and expired ones included")


class AccessToken(BaseModel):
    """A token Selkies' table must hold for this session now."""

    model_config = OUT

    share: uuid.UUID
    role: ShareRole
    token: str
    expires_at: datetime


class RecordingCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        pattern=RECORDING_NAME_PATTERN,
        description="The MP4's name in the user's ~/Desktop; default recording-<UTC time>.mp4",
    )


class RecordingAsked(BaseModel):
    """The recording the agent must make (or stop)."""

    model_config = OUT

    wanted: bool
    request: uuid.UUID
    name: str | None


class AccessDocument(BaseModel):
    """What the session's agent keeps its Selkies to (secure mode): the live shares' tokens
    and the pages to disconnect. `digest` changes when any of it does."""

    model_config = OUT

    digest: str
    sharing: str = Field(description="The template's sharing policy: off, view or collab")
    tokens: list[AccessToken]
    disconnect: list[str] = Field(
        description="Pages (viewer ids) asked to be disconnected in the last minutes"
    )
    recording: RecordingAsked | None = Field(
        default=None, description="The recording asked for last (null: none)"
    )
