"""live update: a running preview's version and the source it serves

Revision ID: 0008
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("source_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "sandbox_sources",
        sa.Column("sandbox_id", sa.String(32), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sandbox_id", name=op.f("pk_sandbox_sources")),
    )


def downgrade() -> None:
    op.drop_table("sandbox_sources")
    with op.batch_alter_table("sandboxes") as batch:
        batch.drop_column("source_updated_at")
        batch.drop_column("version")
