"""Which database failures mean "the database is unreachable right now" (a connection dropped by
the server, refused, or none free in time): the app answers those 503 `database_unavailable`,
never 500. SQLAlchemy has already invalidated the pool when it saw the disconnect, and the engine
pings a connection before each checkout, so the next request gets a fresh connection."""

from __future__ import annotations

from sqlalchemy import exc as sa

# The exception types the app's handler is registered for (it asks `unavailable` about each).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sa.DBAPIError, sa.TimeoutError, ConnectionError)


def unavailable(error: BaseException) -> bool:
    """True for a lost, refused or exhausted database connection (a retry later may work)."""
    if isinstance(error, sa.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(
            error, sa.OperationalError | sa.InterfaceError
        )
    return isinstance(error, sa.TimeoutError | ConnectionError)
