"""Pending deletes: provider sandboxes still to be deleted, due ones first, each retried later
with a growing wait until the reaper saw it gone."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select, update

from midori_preview.db.database import Database, rows_changed
from midori_preview.db.models import PendingDelete


class PendingDeleteRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def add(
        self,
        *,
        provider: str,
        provider_id: str | None,
        sandbox_id: str,
        reason: str,
        now: datetime,
        code: str | None = None,
    ) -> None:
        """Remember a delete to do (once per provider sandbox; due at once)."""
        async with self.db.writes() as s, s.begin():
            if provider_id is not None:
                known = await s.scalar(
                    select(PendingDelete.id).where(
                        PendingDelete.provider == provider, PendingDelete.provider_id == provider_id
                    )
                )
                if known is not None:
                    return
            s.add(
                PendingDelete(
                    provider=provider, provider_id=provider_id, sandbox_id=sandbox_id,
                    reason=reason, attempts=0, last_code=code, created_at=now,
                    next_attempt_at=now,
                )
            )  # fmt: skip

    async def due(self, provider: str, now: datetime, limit: int) -> list[PendingDelete]:
        """Deletes due now, oldest first, at most `limit`."""
        async with self.db.reads() as s:
            rows = await s.scalars(
                select(PendingDelete)
                .where(PendingDelete.provider == provider, PendingDelete.next_attempt_at <= now)
                .order_by(PendingDelete.next_attempt_at, PendingDelete.id)
                .limit(limit)
            )
            return list(rows)

    async def postpone(
        self, entry_id: int, *, attempts: int, until: datetime, code: str | None
    ) -> None:
        async with self.db.writes() as s, s.begin():
            await s.execute(
                update(PendingDelete)
                .where(PendingDelete.id == entry_id)
                .values(attempts=attempts, next_attempt_at=until, last_code=code)
            )

    async def done(self, entry_id: int) -> bool:
        async with self.db.writes() as s, s.begin():
            result = await s.execute(delete(PendingDelete).where(PendingDelete.id == entry_id))
            return rows_changed(result) > 0

    async def count(self) -> int:
        async with self.db.reads() as s:
            return int(await s.scalar(select(func.count()).select_from(PendingDelete)) or 0)
