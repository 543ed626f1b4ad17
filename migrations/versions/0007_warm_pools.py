"""Time to desktop, second part: the pod's Kubernetes events in the session's log (once, however
many replicas forward them), warm pools of sessions assigned to no one yet, image pre-pull.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A forwarded Kubernetes event's identity (its uid and count): every replica watches the
    # events, one row is kept.
    op.add_column("session_events", sa.Column("source_key", sa.String(128)))
    op.create_index(
        "ux_session_events_source",
        "session_events",
        ["session_id", "source_key"],
        unique=True,
        postgresql_where=sa.text("source_key IS NOT NULL"),
    )
    op.add_column(
        "sessions",
        sa.Column("pool_member", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("sessions", sa.Column("pod_uid", sa.String(64)))
    op.create_index(
        "ix_sessions_pool_members",
        "sessions",
        ["template_name", "phase", "created_at"],
        postgresql_where=sa.text("pool_member"),
    )
    for name, column in (
        ("warm_pool", sa.Column("warm_pool", sa.Integer(), nullable=False, server_default="0")),
        (
            "warm_max_age_s",
            sa.Column("warm_max_age_s", sa.Integer(), nullable=False, server_default="3600"),
        ),
        (
            "persistent_home",
            sa.Column("persistent_home", sa.Boolean(), nullable=False, server_default=sa.true()),
        ),
        ("prepull", sa.Column("prepull", sa.Boolean(), nullable=False, server_default=sa.false())),
    ):
        assert column.name == name
        op.add_column("templates", column)


def downgrade() -> None:
    for name in ("prepull", "persistent_home", "warm_max_age_s", "warm_pool"):
        op.drop_column("templates", name)
    op.drop_index("ix_sessions_pool_members", table_name="sessions")
    op.drop_column("sessions", "pod_uid")
    op.drop_column("sessions", "pool_member")
    op.drop_index("ux_session_events_source", table_name="session_events")
    op.drop_column("session_events", "source_key")
