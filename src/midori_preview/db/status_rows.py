"""The status answer's read (`GET /status`, the busiest read there is): one Core statement on an
autocommit connection: no ORM session or identity map, no BEGIN/ROLLBACK, only the columns the
answer shows. Postgres is read on every call, so the answer is never behind a transition, on any
replica."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import bindparam, select

from midori_preview.db.database import Database
from midori_preview.db.models import Sandbox
from midori_preview.previews.states import SandboxStatus


@dataclass(frozen=True, slots=True)
class StatusRow:
    """The columns of a sandbox row that its status answer shows (`previews.views.status_of`)."""

    id: str
    user_id: str
    project_id: str
    status: SandboxStatus
    reason: str | None
    port: int
    preview_token: str | None
    open_url_expires_at: datetime | None
    expires_at: datetime
    created_at: datetime
    ready_at: datetime | None
    last_heartbeat_at: datetime | None
    error_step: str | None
    error_code: str | None
    error_message: str | None
    error_exit_code: int | None
    logs_tail: list[str] | None
    version: int | None
    source_updated_at: datetime | None


_TABLE = Sandbox.__table__
_FOR_USER = select(*(_TABLE.c[f.name] for f in fields(StatusRow))).where(
    _TABLE.c.id == bindparam("id"), _TABLE.c.user_id == bindparam("user")
)


class StatusRows:
    def __init__(self, db: Database) -> None:
        self.engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def for_user(self, sandbox_id: str, user_id: str) -> StatusRow | None:
        """The sandbox's status columns if `user_id` owns it (else None, as for no row)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(_FOR_USER, {"id": sandbox_id, "user": user_id})).first()
        return StatusRow(*row) if row is not None else None
