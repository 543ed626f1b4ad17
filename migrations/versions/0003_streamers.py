"""Streamers: the template's Selkies line and transport, the session's streamer in use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Templates stored before (and rows written by older replicas during a rolling upgrade) keep
    # today's behaviour: the line the image holds, over WebRTC.
    op.add_column(
        "templates",
        sa.Column("streamer", sa.String(32), nullable=False, server_default="auto"),
    )
    op.add_column(
        "templates",
        sa.Column("transport", sa.String(16), nullable=False, server_default="webrtc"),
    )
    op.add_column("sessions", sa.Column("streamer", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("sessions", "streamer")
    op.drop_column("templates", "transport")
    op.drop_column("templates", "streamer")
