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


def downgrade() -> None:
    op.drop_column("sessions", "report_digest")
    op.drop_column("sessions", "claimed_at")
