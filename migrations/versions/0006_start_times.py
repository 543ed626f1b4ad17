"""Time to desktop: when a session's objects existed and its pod was scheduled (beside
running_at), and whether it came from a warm pool.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Unknown (null) for sessions that got there before this version: nothing recorded when.
    op.add_column("sessions", sa.Column("provisioned_at", sa.DateTime(timezone=True)))
    op.add_column("sessions", sa.Column("scheduled_at", sa.DateTime(timezone=True)))
    op.add_column(
        "sessions", sa.Column("warm", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    op.drop_column("sessions", "warm")
    op.drop_column("sessions", "scheduled_at")
    op.drop_column("sessions", "provisioned_at")
