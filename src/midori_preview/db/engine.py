"""The engine; migrations through Alembic (never `create_all`). Sessions: `database.py`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import cast

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine.interfaces import AdaptedConnection, DBAPIConnection
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_

# Inside the package, so that an installed wheel can migrate its database (alembic.ini at the
# repository root points here too).
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(
    url: str,
    *,
    pool_size: int = 20,
    max_overflow: int = 10,
    pool_timeout: float = 30,
    ping: bool = True,
) -> AsyncEngine:
    """An engine for `url`. Postgres: `pool_size` connections kept, up to `max_overflow` more
    under load, a request waiting at most `pool_timeout` s for one (then 503). Every replica
    has its own pools: replicas × their connections must fit in the server's max_connections,
    or a burst is refused by the server instead of queued by the pool. `ping=False`: no
    pre-ping, for reads that retry on a dropped connection themselves (`db/status_rows.py`)."""
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
    # The pool keeps `pool_size` connections: overflow ones are closed again when returned, and
    # a connect is the dearest thing a read can do, so it keeps enough for the requests one
    # replica has in flight at a few hundred per second.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
        pool_recycle=1800,
    )
    if ping:
        event.listen(engine.sync_engine, "checkout", _ping)
    return engine


def make_unpinged_engine(
    url: str, *, pool_size: int = 5, max_overflow: int = 5, pool_timeout: float = 30
) -> AsyncEngine | None:
    """Postgres: a small pool without the pre-ping, for the status read (`status_rows.py`),
    which repeats itself once on a dropped connection instead. None for SQLite (nothing to
    ping: the one engine serves)."""
    if url.startswith("sqlite"):
        return None
    return make_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout, ping=False
    )


def _ping(dbapi_connection: DBAPIConnection, *_: object) -> None:
    """The pre-ping, as one round trip (`;`). SQLAlchemy's own (`pool_pre_ping`) wraps it in
    BEGIN … ROLLBACK for pgbouncer's transaction mode: three round trips per checkout, most of a
    status read's time. A failed ping replaces this connection and, like SQLAlchemy's,
    invalidates the rest of the pool (a server that dropped one dropped them all)."""
    try:
        await_(cast("AdaptedConnection", dbapi_connection).driver_connection.fetchrow(";"))
    except Exception as exc:
        raise InvalidatePoolError(f"pre-ping failed: {type(exc).__name__}") from exc


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
