"""Capacity-aware waiting: a session whose pod waits for GPUs (or CPU, memory) records what is
short and what the cluster autoscaler said; a template may fail such a session at once when no
node group can help. Additive only: nullable or defaulted columns, which a replica of the
previous version ignores during a rolling update.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sessions", sa.Column("capacity_wait", postgresql.JSONB(), nullable=True))
    op.add_column(
        "templates",
        sa.Column("fail_without_scale_up", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # the waiting sessions, ranked by the reconciler: a partial index keeps that cheap
    op.create_index(
        "ix_sessions_capacity_wait",
        "sessions",
        ["created_at"],
        postgresql_where=sa.text("capacity_wait IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_sessions_capacity_wait", table_name="sessions")
    op.drop_column("templates", "fail_without_scale_up")
    op.drop_column("sessions", "capacity_wait")
