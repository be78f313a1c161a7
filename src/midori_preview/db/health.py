"""Readiness of the database: one round trip."""

from __future__ import annotations

from sqlalchemy import text

from midori_preview.db.database import Database


class HealthRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            async with self.db.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True
