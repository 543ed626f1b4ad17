"""Wire models of the audit trail."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

OUT = ConfigDict(json_schema_serialization_defaults_required=True)


class AuditRecordOut(BaseModel):
    """One thing done: what (`type`), by whom (`actor`: the API token's name, or `desktop`
    for what the session's Selkies reported), to which user's session, with its metadata
    (sizes, file names, roles; never contents)."""

    model_config = OUT

    id: int = Field(description="Increasing: page with `after`, dedupe deliveries by it")
    at: datetime
    type: str = Field(
        examples=["session.create", "share.create", "desktop.clipboard.receive"],
        description="`session.create`, `session.delete`, `share.create`, `share.revoke`, "
        "`viewer.disconnect`, `recording.start`, `recording.stop`, `template.put`, "
        "`template.delete`, `token.create`, `token.revoke`, and the desktop's own as "
        "`desktop.<Selkies event>` (`desktop.session.connect`, `desktop.clipboard.send`, "
        "`desktop.file.upload.end`, `desktop.file.download`, `desktop.recording.start`, ...)",
    )
    actor: str | None
    user: str | None
    session_id: uuid.UUID | None
    data: dict[str, Any]


class AuditPage(BaseModel):
    model_config = OUT

    items: list[AuditRecordOut] = Field(description="Oldest first")
    next_cursor: int | None = Field(
        description="Pass as `after` for the next page; null at the end"
    )


class DesktopAuditEvent(BaseModel):
    """One event of Selkies' audit webhook, as it sends it (selkies/audit.py)."""

    model_config = ConfigDict(extra="allow")

    event: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,40}$")
    ts: str | None = Field(default=None, max_length=40)
