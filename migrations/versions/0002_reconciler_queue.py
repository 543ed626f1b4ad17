"""The reconciler's work queue on sessions: due time, claim token, attempts, force delete.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("next_reconcile_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("sessions", sa.Column("claim_token", sa.Uuid(), nullable=True))
    op.add_column(
        "sessions", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "sessions",
        sa.Column("force_delete", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.alter_column("sessions", "attempts", server_default=None)
    op.alter_column("sessions", "force_delete", server_default=None)
    # Sessions stored before the reconciler existed are due now.
    op.execute("UPDATE sessions SET next_reconcile_at = now() WHERE phase <> 'Terminated'")
    op.create_index(
        "ix_sessions_next_reconcile_at",
        "sessions",
        ["next_reconcile_at"],
        postgresql_where=sa.text("next_reconcile_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_next_reconcile_at", table_name="sessions")
    op.drop_column("sessions", "force_delete")
    op.drop_column("sessions", "attempts")
    op.drop_column("sessions", "claim_token")
    op.drop_column("sessions", "next_reconcile_at")
