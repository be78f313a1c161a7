"""Domain errors: a stable machine `code`, an HTTP status and a human message; one handler renders
them as `{"error": {"code", "message", ...}}`."""

from __future__ import annotations

from typing import Any


class PreviewError(Exception):
    code = "error"
    status = 400

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.message = message
        self.extra = extra
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


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


class ProviderFailure(PreviewError):
    """A provider error surfaced to the API under our own code (never vendor text)."""

    status = 502

    def __init__(self, code: str, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
