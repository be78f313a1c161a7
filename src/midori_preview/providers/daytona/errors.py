"""How `daytona` SDK errors become our provider errors, and how failed calls are retried.

The SDK raises one `DaytonaError` tree for both the API and the sandbox toolbox; some calls
(`fs.upload_files`) raise the base class with only `status_code` set, so the status decides first
and the class second. Messages we raise are ours; the vendor's text is logged at debug level only,
with anything that looks like a credential masked.

Retried: connection failures, 429 (after its `Retry-After`), 502/503/504 — and for calls that are
not idempotent only what surely was not carried out (429, 503, a connection never made). Never:
400/401/403/404/409/422. Waits and bounds are the service's one `RetryPolicy` (`retry.py`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import structlog
from daytona import (
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaConflictError,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaForbiddenError,
    DaytonaNotFoundError,
    DaytonaRateLimitError,
    DaytonaTimeoutError,
)
from tenacity import RetryCallState

from midori_preview.providers.base import (
    ProviderError,
    ProviderNotFound,
    ProviderQuota,
    ProviderRejected,
    ProviderTimeout,
    ProviderUnavailable,
)
from midori_preview.retry import RetryPolicy

log = structlog.get_logger(__name__)
T = TypeVar("T")

_STATUS_BY_CLASS: tuple[tuple[type[DaytonaError], int], ...] = (
    (DaytonaBadRequestError, 400),
    (DaytonaAuthenticationError, 401),
    (DaytonaForbiddenError, 403),
    (DaytonaNotFoundError, 404),
    (DaytonaConflictError, 409),
    (DaytonaRateLimitError, 429),
)
_QUOTA_HINTS = re.compile(
    r"quota|limit exceeded|exceeds? (the )?(maximum|limit)|total (cpu|memory|disk)|"
    r"insufficient (resources|credits?)|out of (credits?|capacity)",
    re.IGNORECASE,
)
_CREDENTIAL_LIKE = re.compile(r"(?i)bearer\s+\S+|[A-Za-z0-9_]{24,}")


def status_of(exc: DaytonaError) -> int | None:
    """The HTTP status behind an SDK error, when there was one."""
    if exc.status_code is not None:
        return exc.status_code
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(exc, cls):
            return status
    return None


def _never_sent(exc: BaseException) -> bool:
    """True when the transport failed before the request left (connect refused, DNS...)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, aiohttp.ClientConnectorError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def is_retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Worth another attempt? Non-idempotent calls retry only what surely was not processed."""
    if not isinstance(exc, DaytonaError):
        return False
    status = status_of(exc)
    if status in (429, 503):
        return True
    if status in (502, 504):
        return idempotent
    if isinstance(exc, DaytonaConnectionError):
        return idempotent or _never_sent(exc)
    return False


def is_ambiguous(exc: DaytonaError) -> bool:
    """The request may have been carried out even though it failed (so check before retrying)."""
    status = status_of(exc)
    if status is not None:
        return status in (408, 500, 502, 504)
    return True  # transport failures, and client-side failures after the request (state waits)


def retry_after_seconds(exc: BaseException) -> float | None:
    """The server's `Retry-After` (seconds form) on a 429/503, if it sent one."""
    if not isinstance(exc, DaytonaError):
        return None
    headers: Mapping[str, Any] = exc.headers or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, float(str(value).strip()))
            except ValueError:
                return None
    return None


def vendor_detail(exc: BaseException) -> str:
    """The vendor's message, masked and cut short, for debug logs only."""
    text = exc.message if isinstance(exc, DaytonaError) else str(exc)
    return _CREDENTIAL_LIKE.sub("[masked]", text)[:300]


def to_provider_error(exc: DaytonaError, action: str) -> ProviderError:
    """Our error for a failed SDK call. `action` says what we were doing, e.g. "create sandbox"."""
    status = status_of(exc)
    log.debug(
        "daytona.call_failed",
        action=action,
        status=status,
        error_type=type(exc).__name__,
        code=exc.code,
        detail=vendor_detail(exc),
    )
    if status == 404:
        return ProviderNotFound(f"{action}: not found at Daytona")
    if status == 429:
        return ProviderUnavailable(
            f"{action}: Daytona is rate limiting us", retry_after=retry_after_seconds(exc)
        )
    if status == 403 or (
        status is not None and 400 <= status < 500 and _QUOTA_HINTS.search(exc.message or "")
    ):
        return ProviderQuota(f"{action}: Daytona refused (account quota or permissions)")
    if status in (408, 504) or (
        isinstance(exc, DaytonaTimeoutError) and not isinstance(exc, DaytonaConnectionError)
    ):
        return ProviderTimeout(f"{action}: Daytona did not answer in time")
    if isinstance(exc, DaytonaConnectionError) or (status is not None and status >= 500):
        return ProviderUnavailable(
            f"{action}: Daytona is unavailable", retry_after=retry_after_seconds(exc)
        )
    if status == 401:
        return ProviderRejected(f"{action}: Daytona rejected our credentials")
    if status is not None and 400 <= status < 500:
        return ProviderRejected(f"{action}: Daytona rejected the request")
    return ProviderError(f"{action}: failed at Daytona")


class DaytonaRetry:
    """Runs SDK calls under the service's retry policy, retrying what Daytona may still carry out
    (`is_retryable`) after its `Retry-After`, and maps what finally fails to our errors."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def backoff(self, attempt: int) -> float:
        return self.policy.backoff(attempt)

    async def call(
        self, action: str, fn: Callable[[], Awaitable[T]], *, idempotent: bool = True
    ) -> T:
        """`await fn()`, retried while worth it; a final SDK error becomes our `ProviderError`."""

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.info(
                "daytona.retry",
                action=action,
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 3),
                status=status_of(exc) if isinstance(exc, DaytonaError) else None,
            )

        retrying = self.policy.retrying(
            retry_if=lambda exc: is_retryable(exc, idempotent=idempotent),
            retry_after=retry_after_seconds,
            on_retry=before_sleep,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await fn()
        except DaytonaError as exc:
            raise to_provider_error(exc, action) from None
        raise AssertionError("unreachable: tenacity returns or raises")
