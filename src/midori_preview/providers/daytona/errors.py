"""How `daytona` SDK errors become our provider errors, and how failed calls are retried.

The SDK raises one `DaytonaError` tree for both the API and the sandbox toolbox; some calls
(`fs.upload_files`) raise the base class with only `status_code` set, so the status decides first
and the class second. Messages we raise are ours; the vendor's text is logged at debug level only,
with anything that looks like a credential masked.

Retried: connection failures, 429 (after its `Retry-After-<throttler>`), 502/503/504 — and for
calls that are not idempotent only what surely was not carried out (429, 503, a connection never
made); 409 only for deletes (a transition in progress). Never: 400/401/403/404/422. Waits and
bounds are the service's one `RetryPolicy` (`retry.py`).
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
    r"total (?P<resource>cpu|memory|disk|gpu)|quota|limit exceeded|"
    r"exceeds? (the )?(maximum|limit)|insufficient (resources|credits?)|out of (credits?|capacity)",
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


def is_retryable(exc: BaseException, *, idempotent: bool, conflict: bool = False) -> bool:
    """Worth another attempt? Non-idempotent calls retry only what surely was not processed;
    with `conflict`, a 409 too (Daytona's "state change in progress": a delete did nothing and
    works once the sandbox's state settles)."""
    if not isinstance(exc, DaytonaError):
        return False
    status = status_of(exc)
    if conflict and status == 409:
        return True
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
    """The server's wait (seconds form) on a 429/503, if it sent one. Daytona's API rate-limits
    with named throttlers (@nestjs/throttler), whose wait is in `Retry-After-<throttler>`
    (`Retry-After-sandbox-create`…); a plain `Retry-After` counts too. The longest one wins:
    every throttler that refused must have let go."""
    if not isinstance(exc, DaytonaError):
        return None
    headers: Mapping[str, Any] = exc.headers or {}
    waits: list[float] = []
    for key, value in headers.items():
        name = key.lower()
        if name == "retry-after" or name.startswith("retry-after-"):
            try:
                waits.append(max(0.0, float(str(value).strip())))
            except ValueError:
                continue
    return max(waits) if waits else None


def quota_message(hint: re.Match[str]) -> str:
    """Our words for a quota refusal (Daytona answers 400 "Total CPU limit exceeded. Maximum
    allowed: 10."): which limit, never the vendor's text."""
    resource = (hint["resource"] or "").lower()
    if resource:
        name = resource.upper() if resource in ("cpu", "gpu") else resource
        return (
            f"the Daytona organization's total {name} limit is reached: "
            "stop other sandboxes or raise the organization's quota"
        )
    return "the Daytona organization is out of quota: stop other sandboxes or raise its limits"


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
    if (
        status is not None
        and 400 <= status < 500
        and (hint := _QUOTA_HINTS.search(exc.message or ""))
    ):
        return ProviderQuota(f"{action}: {quota_message(hint)}")
    if status == 403:
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
        self,
        action: str,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool = True,
        conflict: bool = False,
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
            retry_if=lambda exc: is_retryable(exc, idempotent=idempotent, conflict=conflict),
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
