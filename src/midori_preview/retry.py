"""The one retry policy of the service's outside calls (Daytona, GitHub): bounded attempts and an
optional deadline, exponential backoff with jitter, and the server's own `Retry-After` when it
sent one. Each client brings what only it knows: which failures are worth another attempt and
where its server's `Retry-After` is found."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
)
from tenacity.stop import stop_base


def _no_hint(exc: BaseException) -> float | None:
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry. `deadline_seconds` bounds the whole call, waits
    included: no attempt starts past it, and no wait would end past it."""

    attempts: int
    initial_backoff_seconds: float
    max_backoff_seconds: float
    deadline_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")

    def backoff(self, attempt: int) -> float:
        """The wait after failed attempt `attempt` (1-based): initial·2^(n-1) plus a random
        jitter of up to `initial` (clients failing together retry apart), at most the maximum."""
        initial = self.initial_backoff_seconds
        exponential = initial * 2.0 ** min(attempt - 1, 64)
        return min(self.max_backoff_seconds, exponential + random.uniform(0, initial))

    def retrying(
        self,
        *,
        retry_if: Callable[[BaseException], bool],
        retry_after: Callable[[BaseException], float | None] = _no_hint,
        on_retry: Callable[[RetryCallState], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> AsyncRetrying:
        """A tenacity controller: `async for attempt in policy.retrying(...): with attempt: ...`.

        `retry_if` says which failures deserve another attempt; `retry_after` reads the server's
        own wait from a failure (None: use the backoff); `on_retry` runs before each wait (for a
        log line); the last failure is re-raised as it is."""

        def wait(state: RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome is not None else None
            hinted = retry_after(failure) if failure is not None else None
            return hinted if hinted is not None else self.backoff(state.attempt_number)

        stop: stop_base = stop_after_attempt(self.attempts)
        if self.deadline_seconds is not None:
            stop = stop | stop_before_delay(self.deadline_seconds)
        return AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(retry_if),
            before_sleep=on_retry,
            sleep=sleep,
            reraise=True,
        )
