"""The engine; migrations through Alembic (never `create_all`). Sessions: `database.py`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

# Inside the package, so that an installed wheel can migrate its database (alembic.ini at the
# repository root points here too).
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int = 20, pool_timeout: float = 30
) -> AsyncEngine:
    """An engine for `url`. Postgres: `pool_size` connections kept, up to `max_overflow` more
    under load, a request waiting at most `pool_timeout` s for one (then 503). Every replica
    has its own pool: replicas × (pool_size + max_overflow) must fit in the server's
    max_connections, or a burst is refused by the server instead of queued by the pool."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(conn: DBAPIConnection, _: ConnectionPoolEntry) -> None:
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    # Pre-ping: a connection the server dropped (restart, failover, pg_terminate_backend) is
    # replaced at checkout instead of failing a request; it costs one short round trip per
    # checkout. A connection dropped mid-query still fails its request: 503, never 500
    # (`db/errors.py`), and SQLAlchemy then invalidates the whole pool.
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
        pool_pre_ping=True,
    )


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_head(url: str) -> None:
    """Run `alembic upgrade head` (blocking; call from a thread in async code)."""
    if url.startswith("sqlite"):
        Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


async def upgrade_head_async(url: str) -> None:
    await asyncio.to_thread(upgrade_head, url)
