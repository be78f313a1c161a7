"""The database handle: the engine and its session factories, named for what they do, and the
one dialect-aware INSERT the repositories share."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Result
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class Database:
    def __init__(self, engine: AsyncEngine, unpinged: AsyncEngine | None = None) -> None:
        self.engine = engine
        # A pool of its own whose connections are not pinged at checkout, for a hot read that
        # retries once on a dropped connection instead (`status_rows.py`): its own statement is
        # the ping. Autocommit. (None: the engine's own pool, pinged.)
        self.unpinged = unpinged
        self.unpinged_reads = (unpinged or engine).execution_options(isolation_level="AUTOCOMMIT")
        # Writes: one transaction each (`async with db.writes() as s, s.begin(): ...`).
        self.writes: async_sessionmaker[AsyncSession] = async_sessionmaker(
            engine, expire_on_commit=False
        )
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        # Reads: autocommit, so no BEGIN/ROLLBACK round trips on the hot paths (status,
        # heartbeat); each is a single statement, so it sees one consistent snapshot anyway.
        self.reads: async_sessionmaker[AsyncSession] = async_sessionmaker(
            autocommit, expire_on_commit=False
        )
        # Writes of exactly one statement, atomic on its own: no BEGIN/COMMIT round trips (the
        # heartbeat's charge on Postgres). Never for a write of several statements.
        self.single_statement_writes: async_sessionmaker[AsyncSession] = async_sessionmaker(
            autocommit, expire_on_commit=False
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.unpinged is not None:
            await self.unpinged.dispose()


def dialect_insert(session: AsyncSession, table: Any) -> Any:
    """INSERT for the session's database, with its `on_conflict_do_nothing/update` (Postgres and
    SQLite spell them alike)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def rows_changed(result: Result[Any]) -> int:
    """How many rows an UPDATE/INSERT/DELETE touched (its compare-and-set matched when > 0)."""
    return int(cast("CursorResult[Any]", result).rowcount)
