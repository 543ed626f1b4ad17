"""Named records the session queries hand back where a whole row would be too much."""

from __future__ import annotations

import uuid
from typing import Any, NamedTuple


class SessionRef(NamedTuple):
    """A session by id and phase: a user's live sessions, the earlier one a new pod waits for."""

    id: uuid.UUID
    phase: str


class ScheduledFact(NamedTuple):
    """A session's PodScheduled condition, as stored."""

    status: str
    reason: str


class PodFacts(NamedTuple):
    """What a pod relist compares with a session: its phase and PodScheduled condition."""

    phase: str
    scheduled: ScheduledFact | None


class PodEventRow(NamedTuple):
    """A Kubernetes event about a session's pod, as a `PodEvent` of that session's log."""

    session_id: uuid.UUID
    source_key: str  # the Kubernetes event's uid: each one is kept once
    reason: str
    message: str
    data: dict[str, Any]
