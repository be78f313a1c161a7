"""The usage ledger: charged preview seconds per user, project and day (USAGE_TIMEZONE)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from midori_preview.db.database import Database, dialect_insert
from midori_preview.db.models import UsageLedger

# (user, project, day, seconds): one ledger charge.
LedgerEntry = tuple[str, str, str, int]


async def add_usage(session: AsyncSession, entries: Sequence[LedgerEntry], now: datetime) -> None:
    """Add `entries` to the ledger in the session's transaction (upserts; zeros are skipped)."""
    for user_id, project_id, day, seconds in entries:
        if seconds <= 0:
            continue
        stmt = dialect_insert(session, UsageLedger).values(
            user_id=user_id, project_id=project_id, day=day, seconds=seconds, updated_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["user_id", "day", "project_id"],
            set_={"seconds": UsageLedger.seconds + stmt.excluded.seconds, "updated_at": now},
        )
        await session.execute(stmt)


class UsageRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def used_seconds(self, user_id: str, day: str) -> int:
        async with self.db.reads() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(UsageLedger.seconds), 0)).where(
                    UsageLedger.user_id == user_id, UsageLedger.day == day
                )
            )
            return int(total or 0)

    async def by_user_for_day(self, day: str) -> dict[str, int]:
        async with self.db.reads() as s:
            rows = await s.execute(
                select(UsageLedger.user_id, func.sum(UsageLedger.seconds))
                .where(UsageLedger.day == day)
                .group_by(UsageLedger.user_id)
            )
            return {user: int(total) for user, total in rows.all()}

    async def report(self, day_from: str, day_to: str, group_by: str) -> list[Any]:
        """(day, user or project, seconds) rows between two days, both included."""
        col = UsageLedger.user_id if group_by == "user" else UsageLedger.project_id
        async with self.db.reads() as s:
            rows = await s.execute(
                select(UsageLedger.day, col, func.sum(UsageLedger.seconds))
                .where(UsageLedger.day >= day_from, UsageLedger.day <= day_to)
                .group_by(UsageLedger.day, col)
                .order_by(UsageLedger.day, col)
            )
            return list(rows.all())
