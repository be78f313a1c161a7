"""github deliveries and previews

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "github_deliveries",
        sa.Column("delivery_id", sa.String(length=100), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_github_deliveries")),
    )
    with op.batch_alter_table("github_deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_github_deliveries_received_at", ["received_at"], unique=False)

    op.create_table(
        "github_previews",
        sa.Column("repo", sa.String(length=200), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("branch", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("sandbox_id", sa.String(length=32), nullable=True),
        sa.Column("head_sha", sa.String(length=40), nullable=False),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("deployment_id", sa.BigInteger(), nullable=True),
        sa.Column("installation_id", sa.BigInteger(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("event_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("repo", "target", name=op.f("pk_github_previews")),
    )
    with op.batch_alter_table("github_previews", schema=None) as batch_op:
        batch_op.create_index("ix_github_previews_sandbox_id", ["sandbox_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("github_previews", schema=None) as batch_op:
        batch_op.drop_index("ix_github_previews_sandbox_id")

    op.drop_table("github_previews")
    with op.batch_alter_table("github_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_github_deliveries_received_at")

    op.drop_table("github_deliveries")
