"""The service's errors: one base (`ServiceError`) carrying a stable machine `code`, a human
`message` safe to show, the HTTP `status` of an answer and optional extras; the app renders every
one of them with one handler as `{"error": {"code", "message", ...}}`. `error_response` documents
such an answer in OpenAPI (schema + example) for a route's `responses=`.

The subtrees: `PreviewError` (the API's own answers, below), `providers.base.ProviderError` and
`github.client.GitHubError` (clients' errors, which their callers translate), and
`previews.pipeline.StepFailed` (how a build ended, kept on its row)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

Responses = dict[int | str, dict[str, Any]]


class ServiceError(Exception):
    """The one base of our errors. `code` is ours (never vendor text); `status` is the HTTP status
    an answer carries (None: the error has none of its own and answers 500); extras go into the
    error body; `exit_code` is set by errors about a process (a failed step, an exited server)."""

    code = "internal_error"
    status: int | None = 500
    exit_code: int | None = None

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers = headers or {}

    @property
    def http_status(self) -> int:
        return self.status or 500

    def body(self) -> dict[str, Any]:
        return error_body(self.code, self.message, **self.extra)


class PreviewError(ServiceError):
    """An error the API answers with as it is (4xx/5xx with our code)."""

    code = "error"
    status = 400


class ValidationFailed(PreviewError):
    code = "validation_error"
    status = 422


class IdempotencyConflict(PreviewError):
    code = "idempotency_key_reused"
    status = 422


class PayloadTooLarge(PreviewError):
    code = "payload_too_large"
    status = 413


class Unauthorized(PreviewError):
    code = "unauthorized"
    status = 401


class Forbidden(PreviewError):
    code = "forbidden"
    status = 403


class SandboxNotFound(PreviewError):
    code = "sandbox_not_found"
    status = 404


class SandboxStopped(PreviewError):
    code = "sandbox_stopped"
    status = 410


class SandboxNotRunning(PreviewError):
    code = "sandbox_not_running"
    status = 409


class SourceIncompatible(PreviewError):
    """An update that needs a new preview (another template, port or start command)."""

    code = "source_incompatible"
    status = 409


class RebuildFailed(PreviewError):
    """An update's install or build failed: the previous version stays live."""

    code = "rebuild_failed"
    status = 422


class UpdateFailed(PreviewError):
    """The sandbox did not take an update (the provider failed); `providerCode` says how."""

    code = "update_failed"
    status = 502


class ConcurrencyLimit(PreviewError):
    code = "concurrency_limit"
    status = 409


class RateLimited(PreviewError):
    code = "rate_limited"
    status = 429


class DailyQuotaExhausted(PreviewError):
    code = "daily_quota_exhausted"
    status = 429


class DailyQuotaExhaustedGone(DailyQuotaExhausted):
    """The heartbeat of a sandbox stopped because the day's quota ran out."""

    status = 410


class QuotaUnavailable(PreviewError):
    code = "quota_unavailable"
    status = 503


class DatabaseUnavailable(PreviewError):
    """The database dropped or refused the connection: retry shortly (nothing was half done:
    every write is one transaction)."""

    code = "database_unavailable"
    status = 503


# --- OpenAPI ------------------------------------------------------------------------------------


class ErrorDetail(BaseModel):
    """`code` is stable and meant for programs, `message` for people; some codes add fields
    (`sandboxId`, `activeSandboxIds`, `reason`, `resetAt`, `retryAfterSeconds`, `details` …)."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorEnvelope(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def validation_error_body(details: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The 422 of a request FastAPI could not parse: the first problem in `message`, all of
    them in `details` (each `{"loc": [...], "message": ...}`)."""
    first = details[0] if details else {"loc": [], "message": "invalid request"}
    where = ".".join(first["loc"][1:]) if len(first["loc"]) > 1 else "request"
    return error_body("validation_error", f"{where}: {first['message']}", details=list(details))


def error_choices(status: int, description: str, *bodies: dict[str, Any]) -> Responses:
    """One documented error status, ready to merge into a route's `responses=`: the envelope's
    schema and the example bodies (named by their codes when there are several)."""
    media: dict[str, Any]
    if len(bodies) == 1:
        media = {"example": bodies[0]}
    else:
        named: dict[str, Any] = {}
        for body in bodies:
            code = body["error"]["code"]
            name = code if code not in named else f"{code}_{len(named)}"
            named[name] = {"summary": code, "value": body}
        media = {"examples": named}
    return {
        status: {
            "model": ErrorEnvelope,
            "description": description,
            "content": {"application/json": media},
        }
    }


def error_response(
    status: int, code: str, message: str, description: str, **extra: Any
) -> Responses:
    """`responses={**error_response(404, "sandbox_not_found", "No such sandbox.", "…")}`."""
    return error_choices(status, description, error_body(code, message, **extra))


def invalid_request(description: str, *details: tuple[Sequence[str], str]) -> Responses:
    """A documented 422 `validation_error`; `details` as (loc, message), as FastAPI reports them,
    e.g. (("query", "sandboxId"), "Field required")."""
    body = validation_error_body([{"loc": list(loc), "message": msg} for loc, msg in details])
    return error_choices(422, description, body)
