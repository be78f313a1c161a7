"""Which database failures mean "the database is unreachable right now" (a connection dropped by
the server, refused, or none free in time): the app answers those 503 `database_unavailable`,
never 500. SQLAlchemy has already invalidated the pool when it saw the disconnect, and the engine
pings a connection before each checkout, so the next request gets a fresh connection."""

from __future__ import annotations

from sqlalchemy import exc as sa

# The exception types the app's handler is registered for (it asks `unavailable` about each).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sa.DBAPIError, sa.TimeoutError, ConnectionError)


# SQLSTATE classes of a server that cannot take the work now: 08 connection exception, 53
# insufficient resources (53300 too many connections), 57P01-57P03 shutting down / starting up.
UNAVAILABLE_STATES = ("08", "53", "57P01", "57P02", "57P03")


def unavailable(error: BaseException) -> bool:
    """True for a lost, refused or exhausted database connection (a retry later may work)."""
    if isinstance(error, sa.DBAPIError):
        return (
            bool(error.connection_invalidated)
            or isinstance(error, sa.OperationalError | sa.InterfaceError)
            or _sqlstate(error.orig).startswith(UNAVAILABLE_STATES)
        )
    return isinstance(error, sa.TimeoutError | ConnectionError)


def _sqlstate(error: BaseException | None) -> str:
    """The SQLSTATE of a driver error or of the error it was raised from ('' when none)."""
    while error is not None:
        state = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(state, str) and state:
            return state
        error = error.__cause__
    return ""
