"""reaper due queries: an index for each (idle, expired, lease lost, stuck stopping)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The same expression as `models.SEEN_AT` (the planner matches an expression index by it).
SEEN_AT = "coalesce(last_heartbeat_at, ready_at, created_at)"


def upgrade() -> None:
    op.create_index(
        "ix_sandboxes_idle", "sandboxes", ["status", "kind", "visible", sa.text(SEEN_AT)]
    )
    op.create_index("ix_sandboxes_status_expires", "sandboxes", ["status", "expires_at"])
    op.create_index("ix_sandboxes_status_lease", "sandboxes", ["status", "lease_expires_at"])
    op.create_index(
        "ix_sandboxes_active_status_updated", "sandboxes", ["active", "status", "updated_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_sandboxes_active_status_updated", table_name="sandboxes")
    op.drop_index("ix_sandboxes_status_lease", table_name="sandboxes")
    op.drop_index("ix_sandboxes_status_expires", table_name="sandboxes")
    op.drop_index("ix_sandboxes_idle", table_name="sandboxes")
