"""Sharing a desktop and who watches it: a template's `sharing` policy (off, view, collab) and
its `idle` (what keeps a session from its idle deadline: keepalives, viewers, or both), the
shares of a session (a role, an expiry, a revocation; the token itself is derived from the
share's id under the server key, never stored), the viewers the agent last saw connected, and
the audit trail (with its outgoing webhook's delivery state), and recording on demand (a
template's `recording`, a session's wanted and reported recording).
Additive only: defaulted columns, a new table and a nullable column, which a replica of the
previous version ignores during a rolling update.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "templates", sa.Column("sharing", sa.String(8), nullable=False, server_default="off")
    )
    op.add_column(
        "templates",
        sa.Column("idle", sa.String(16), nullable=False, server_default="keepalive"),
    )
    op.add_column("sessions", sa.Column("viewers", postgresql.JSONB(), nullable=True))
    op.add_column(
        "templates",
        sa.Column("recording", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("sessions", sa.Column("recording", postgresql.JSONB(), nullable=True))
    op.create_table(
        "session_shares",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("session_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_by", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name=op.f("fk_session_shares_session_id_sessions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_session_shares")),
        sa.CheckConstraint(
            "role IN ('viewer', 'collaborator')", name=op.f("ck_session_shares_role_known")
        ),
    )
    op.create_index(
        "ix_session_shares_session_id_created_at",
        "session_shares",
        ["session_id", "created_at"],
    )
    # the audit trail: the control plane's own actions and its desktops' (Selkies' webhook),
    # kept when their session ends, each delivered to the outgoing webhook at least once
    op.create_table(
        "audit_records",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(48), nullable=False),
        sa.Column("actor", sa.String(100), nullable=True),
        sa.Column("user", sa.String(63), nullable=True),
        sa.Column("session_id", sa.Uuid(), nullable=True),
        sa.Column("data", postgresql.JSONB(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_records")),
    )
    op.create_index("ix_audit_records_session_id_id", "audit_records", ["session_id", "id"])
    op.create_index("ix_audit_records_user_id", "audit_records", ["user", "id"])
    op.create_index("ix_audit_records_at", "audit_records", ["at"])
    op.create_index(
        "ix_audit_records_undelivered",
        "audit_records",
        ["id"],
        postgresql_where=sa.text("delivered_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_table("audit_records")
    op.drop_index("ix_session_shares_session_id_created_at", table_name="session_shares")
    op.drop_table("session_shares")
    op.drop_column("sessions", "recording")
    op.drop_column("templates", "recording")
    op.drop_column("sessions", "viewers")
    op.drop_column("templates", "idle")
    op.drop_column("templates", "sharing")
