"""Bootstrap tokens marked as such, so rotating VDI_BOOTSTRAP_TOKEN revokes the earlier values.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "api_tokens",
        sa.Column("bootstrap", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # Tokens made from VDI_BOOTSTRAP_TOKEN so far: named "bootstrap", admin scope.
    op.execute(
        "UPDATE api_tokens SET bootstrap = true "
        "WHERE name = 'bootstrap' AND scopes = ARRAY['admin']::text[]"
    )


def downgrade() -> None:
    op.drop_column("api_tokens", "bootstrap")
