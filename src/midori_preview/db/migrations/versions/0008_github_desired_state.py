"""github: what GitHub should show (comment body, deployment state) until it does; delivery
outcomes (a redelivery of a failed delivery runs again)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("github_previews") as batch:
        batch.add_column(sa.Column("comment_body", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("comment_synced", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("deploy_state", sa.String(16), nullable=True))
        batch.add_column(sa.Column("deploy_description", sa.String(140), nullable=True))
        batch.add_column(sa.Column("deploy_url", sa.Text(), nullable=True))
        batch.add_column(
            sa.Column("deploy_synced", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    with op.batch_alter_table("github_deliveries") as batch:
        batch.add_column(sa.Column("outcome", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("github_deliveries") as batch:
        batch.drop_column("outcome")
    with op.batch_alter_table("github_previews") as batch:
        for name in (
            "deploy_synced",
            "deploy_url",
            "deploy_description",
            "deploy_state",
            "comment_synced",
            "comment_body",
        ):
            batch.drop_column(name)
