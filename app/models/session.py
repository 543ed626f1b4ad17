"""Desktop sessions: desired and observed state of one user's desktop."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Index, Integer, String, Text, false, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.models._types import TZDateTime, utcnow

PHASES = (
    "Pending",
    "Provisioning",
    "Starting",
    "Running",
    "Failed",
    "Terminating",
    "Terminated",
)


class VDISession(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        CheckConstraint(
            "phase IN (" + ", ".join(f"'{phase}'" for phase in PHASES) + ")", name="phase_known"
        ),
        Index("ix_sessions_created_at_id", "created_at", "id"),
        Index("ix_sessions_user_phase", "user", "phase"),
        Index("ix_sessions_template_name_phase", "template_name", "phase"),
        Index("ix_sessions_phase", "phase"),
        Index(
            "ix_sessions_due_work",
            "next_reconcile_at",
            postgresql_where=text("next_reconcile_at IS NOT NULL AND phase <> 'Pending'"),
        ),
        Index(
            "ix_sessions_pending_queue",
            "template_name",
            "next_reconcile_at",
            postgresql_where=text("phase = 'Pending'"),
        ),
        Index(
            "ix_sessions_pool_members",
            "template_name",
            "phase",
            "created_at",
            postgresql_where=text("pool_member"),
        ),
        Index(
            "ix_sessions_capacity_wait",
            "created_at",
            postgresql_where=text("capacity_wait IS NOT NULL"),
        ),
        Index(
            "ix_sessions_next_reconcile_at",
            "next_reconcile_at",
            postgresql_where=text("next_reconcile_at IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user: Mapped[str] = mapped_column(String(63))
    template_name: Mapped[str] = mapped_column(String(63))
    # The template as it was at creation: replacing a template never changes a live session.
    template_spec: Mapped[dict[str, Any]] = mapped_column(JSONB)
    phase: Mapped[str] = mapped_column(String(16), default="Pending")
    reason: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, default=list)
    url: Mapped[str] = mapped_column(String(300))
    encoder: Mapped[str | None] = mapped_column(String(64))
    # The Selkies line and version the agent runs, e.g. "selkies 2.1.0".
    streamer: Mapped[str | None] = mapped_column(String(64))
    gpu: Mapped[int] = mapped_column(Integer)
    # Claimed from a template's warm pool (provisioned and checked before the user asked).
    warm: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # A warm pool's member assigned to no one yet (its user is ""): never listed, never counted
    # against a user; a create for its template claims it (then false, and `warm` true).
    pool_member: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The pod's uid, the owner of the objects created later (a warm session's route).
    pod_uid: Mapped[str | None] = mapped_column(String(64))
    # Fernet token of the session's basic-auth password and TURN credentials.
    secrets_encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZDateTime, default=utcnow)
    # Time to desktop: its objects existed (Starting), its pod was scheduled, it was Running.
    provisioned_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    scheduled_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    running_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    idle_deadline: Mapped[datetime] = mapped_column(TZDateTime)
    expires_at: Mapped[datetime] = mapped_column(TZDateTime)
    last_report_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # When the reconciler first took it from the queue: its start timeout counts from here, so a
    # session waiting behind a rush is never failed before it was tried.
    claimed_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    # What the last report said that matters (checks, encoder, streamer): a heartbeat with the
    # same digest on a Running session is one UPDATE of its clock.
    report_digest: Mapped[str | None] = mapped_column(String(64))
    # The reconciler's work queue: due when next_reconcile_at <= now. A claim sets it to the end of
    # a lease and a fresh claim_token, so a replica that dies leaves the row due again.
    next_reconcile_at: Mapped[datetime | None] = mapped_column(TZDateTime)
    claim_token: Mapped[uuid.UUID | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    force_delete: Mapped[bool] = mapped_column(Boolean, default=False)
    # Its pod cannot be scheduled for lack of a resource (migration 0010): what is short, since
    # when, what the cluster autoscaler said, its place among the sessions waiting for the same
    # (`schemas.CapacityWait`). None once the pod is on a node.
    capacity_wait: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    # The pages connected to its desktop as the agent last reported them (migration 0011):
    # `schemas.Viewer` each. None: the agent never said (a streamer that cannot tell).
    viewers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONB(none_as_null=True))
    # Recording on demand (migration 0011): what was asked (wanted, name, by whom, the request's
    # id) and what the agent last reported (active, path, size): `schemas.Recording`.
    recording: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
