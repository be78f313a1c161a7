"""Small shared switches and facts (the reaper paused, its last pass) that every replica reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from midori_preview.db.database import Database, dialect_insert
from midori_preview.db.models import ServiceState


class ServiceStateRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, key: str) -> dict[str, Any] | None:
        async with self.db.reads() as s:
            row = await s.get(ServiceState, key)
            return dict(row.value) if row is not None else None

    async def set(self, key: str, value: dict[str, Any], now: datetime) -> None:
        async with self.db.writes() as s, s.begin():
            stmt = dialect_insert(s, ServiceState).values(key=key, value=value, updated_at=now)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key"], set_={"value": stmt.excluded.value, "updated_at": now}
            )
            await s.execute(stmt)
