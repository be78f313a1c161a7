"""The app's error handlers: every `ServiceError` is rendered by one handler as our envelope
`{"error": {"code", "message", ...}}`; FastAPI's own errors (validation, 404/405, undecodable
bodies) and crashes get the same envelope."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from midori_preview.db.errors import DATABASE_ERRORS, unavailable
from midori_preview.errors import (
    DatabaseUnavailable,
    ServiceError,
    error_body,
    validation_error_body,
)
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_error

log = get_logger(__name__)


def _error(code: str, message: str, status: int, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, **extra), status_code=status)


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """What was wrong with a JSON body FastAPI could not even decode, or None for other errors.
    FastAPI answers such a body (not UTF-8, nested too deeply for the parser, an integer too long
    to convert) with a bare 400, raised from the decoding error; to a caller it is as malformed
    as any other bad JSON, which is a 422 `validation_error`."""
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, ValueError | RecursionError):
        return None
    if isinstance(cause, UnicodeDecodeError):
        return "JSON body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "JSON body is nested too deeply"
    return "JSON body could not be decoded"


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error with our envelope."""

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        record_error(exc.code)
        return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(validation_error_body(details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = _unparsable_body(exc)
        if problem is not None:
            return JSONResponse(
                validation_error_body([{"loc": ["body"], "message": problem}]), status_code=422
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(code, str(exc.detail), exc.status_code)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if not unavailable(exc):
            return await unhandled(request, exc)
        log.warning("database.unavailable", path=request.url.path, error=type(exc).__name__)
        err = DatabaseUnavailable("The database is unreachable right now; retry shortly.")
        return JSONResponse(err.body(), status_code=503, headers={"Retry-After": "1"})

    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_error)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.crashed", path=request.url.path)
        return _error("internal_error", "Something went wrong on our side.", 500)
