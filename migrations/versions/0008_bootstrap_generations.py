"""Bootstrap tokens that come back: why a token was revoked (an admin's revocation sticks, a
rotation's is undone when its value returns), and the configuration generation that last made a
bootstrap value current (an older rollout's replica changes nothing).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("api_tokens", sa.Column("revoked_reason", sa.String(16)))
    op.add_column("api_tokens", sa.Column("bootstrap_generation", sa.BigInteger()))
    # Bootstrap tokens revoked before this revision were revoked by rotation or unsetting (an
    # admin's revocation was not told apart): count them as rotated.
    op.execute(
        "UPDATE api_tokens SET revoked_reason = 'rotated' "
        "WHERE bootstrap AND revoked_at IS NOT NULL"
    )
    op.execute(
        "UPDATE api_tokens SET revoked_reason = 'admin' WHERE revoked_reason IS NULL "
        "AND revoked_at IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_column("api_tokens", "bootstrap_generation")
    op.drop_column("api_tokens", "revoked_reason")
