"""The status answer's read (`GET /status`, the busiest read there is): one Core statement on an
autocommit connection: no ORM session or identity map, no BEGIN/ROLLBACK, only the columns the
answer shows, and no pre-ping: the statement is its own ping, run again once on a fresh
connection when the server had dropped the pooled one (a read is safe to repeat). One round
trip. Postgres is read on every call, so the answer is never behind a transition, on any
replica."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import bindparam, select
from sqlalchemy.exc import DBAPIError

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
        self.engine = db.unpinged_reads

    async def for_user(self, sandbox_id: str, user_id: str) -> StatusRow | None:
        """The sandbox's status columns if `user_id` owns it (else None, as for no row)."""
        params = {"id": sandbox_id, "user": user_id}
        try:
            return await self._read(params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # Dropped (restart, failover, pg_terminate_backend): SQLAlchemy has invalidated the
            # pool's older connections, so this takes a new one. A second failure is the answer.
            return await self._read(params)

    async def _read(self, params: dict[str, str]) -> StatusRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_FOR_USER, params)).first()
        return StatusRow(*row) if row is not None else None
