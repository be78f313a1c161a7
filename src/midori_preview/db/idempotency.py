"""Idempotency keys: which sandbox a user's `Idempotency-Key` created, pruned after their TTL."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from midori_preview.db.database import Database, dialect_insert, rows_changed
from midori_preview.db.models import IdempotencyKey


async def insert_key(session: AsyncSession, key: IdempotencyKey) -> bool:
    """Insert `key` in the session's transaction unless it exists: True when it was inserted."""
    result = await session.execute(
        dialect_insert(session, IdempotencyKey)
        .values(
            user_id=key.user_id,
            key=key.key,
            request_hash=key.request_hash,
            sandbox_id=key.sandbox_id,
            created_at=key.created_at,
        )
        .on_conflict_do_nothing()
    )
    return rows_changed(result) > 0


class IdempotencyRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, user_id: str, key: str) -> IdempotencyKey | None:
        async with self.db.reads() as s:
            return await s.get(IdempotencyKey, (user_id, key))

    async def remember(self, key: IdempotencyKey) -> None:
        """Record `key` (a key already recorded stays as it is)."""
        async with self.db.writes() as s, s.begin():
            await insert_key(s, key)

    async def prune(self, before: datetime) -> int:
        """Forget keys created before `before`: how many."""
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < before)
            )
            return rows_changed(result)
