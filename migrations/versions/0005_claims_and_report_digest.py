"""The start timeout counts from the reconciler's claim; a heartbeat that changes nothing is one
UPDATE (the digest of the last report's meaningful content).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("claimed_at", sa.DateTime(timezone=True)))
    op.add_column("sessions", sa.Column("report_digest", sa.String(64)))
    # Sessions past Pending were claimed at some point; their creation is the best bound known.
    op.execute("UPDATE sessions SET claimed_at = created_at WHERE phase <> 'Pending'")
    # The work queue in two parts (app.sessions.repository.claim_due): work on existing
    # sessions by due time, and new sessions by template then due time.
    op.create_index(
        "ix_sessions_due_work",
        "sessions",
        ["next_reconcile_at"],
        postgresql_where=sa.text("next_reconcile_at IS NOT NULL AND phase <> 'Pending'"),
    )
    op.create_index(
        "ix_sessions_pending_queue",
        "sessions",
        ["template_name", "next_reconcile_at"],
        postgresql_where=sa.text("phase = 'Pending'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_pending_queue", table_name="sessions")
    op.drop_index("ix_sessions_due_work", table_name="sessions")
    op.drop_column("sessions", "report_digest")
    op.drop_column("sessions", "claimed_at")
