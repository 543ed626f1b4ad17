"""A template's desktop policy: clipboard, file transfers and their rate cap, audio, microphone,
printing and gamepads. Existing templates get the defaults (what they allowed before: all of it,
the microphone excepted).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    sa.Column("clipboard", sa.String(8), nullable=False, server_default="both"),
    sa.Column("file_transfer", sa.String(8), nullable=False, server_default="both"),
    sa.Column("file_transfer_limit_mbps", sa.Float(), nullable=False, server_default="0"),
    sa.Column("audio", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("microphone", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("printing", sa.Boolean(), nullable=False, server_default=sa.true()),
    sa.Column("gamepads", sa.Boolean(), nullable=False, server_default=sa.true()),
)


def upgrade() -> None:
    for column in COLUMNS:
        op.add_column("templates", column)


def downgrade() -> None:
    for column in reversed(COLUMNS):
        op.drop_column("templates", column.name)
