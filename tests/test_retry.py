"""The one retry policy (Daytona and GitHub calls): what it retries, how long it waits (the
server's own Retry-After first, else exponential backoff with jitter), and where it stops."""

from __future__ import annotations

import pytest

from midori_preview.retry import RetryPolicy


class Flaky(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("flaky")
        self.retry_after = retry_after


class Final(Exception):
    pass


class Calls:
    """A call failing with the given errors, in order, then answering "ok"; waits are recorded
    instead of slept."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.waits: list[float] = []

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)


async def run(policy: RetryPolicy, calls: Calls) -> str:
    retrying = policy.retrying(
        retry_if=lambda exc: isinstance(exc, Flaky),
        retry_after=lambda exc: exc.retry_after if isinstance(exc, Flaky) else None,
        sleep=calls.sleep,
    )
    async for attempt in retrying:
        with attempt:
            return await calls()
    raise AssertionError("unreachable")


def policy(*, attempts: int = 4, deadline_seconds: float | None = None) -> RetryPolicy:
    return RetryPolicy(
        attempts=attempts,
        initial_backoff_seconds=0.5,
        max_backoff_seconds=3.0,
        deadline_seconds=deadline_seconds,
    )


def test_backoff_doubles_with_jitter_up_to_the_maximum() -> None:
    p = policy()
    for attempt, base in [(1, 0.5), (2, 1.0), (3, 2.0)]:
        waits = [p.backoff(attempt) for _ in range(200)]
        assert all(base <= w <= base + 0.5 for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > 0.1  # jittered: clients failing together retry apart
    assert all(p.backoff(n) <= 3.0 for n in (4, 10, 1000))


async def test_retryable_failures_are_retried_until_it_answers() -> None:
    calls = Calls(Flaky(), Flaky())
    assert await run(policy(), calls) == "ok"
    assert calls.calls == 3
    assert len(calls.waits) == 2 and 0.5 <= calls.waits[0] <= 1.0 and 1 <= calls.waits[1] <= 1.5


async def test_the_servers_retry_after_comes_before_the_backoff() -> None:
    calls = Calls(Flaky(retry_after=2.5), Flaky(retry_after=0))
    assert await run(policy(), calls) == "ok"
    assert calls.waits == [2.5, 0]


async def test_other_failures_are_raised_at_once() -> None:
    calls = Calls(Final())
    with pytest.raises(Final):
        await run(policy(), calls)
    assert (calls.calls, calls.waits) == (1, [])


async def test_attempts_are_bounded_and_the_last_failure_is_raised() -> None:
    last = Flaky()
    calls = Calls(Flaky(), Flaky(), Flaky(), last, Flaky())
    with pytest.raises(Flaky) as caught:
        await run(policy(), calls)
    assert caught.value is last
    assert calls.calls == 4 and len(calls.waits) == 3


async def test_no_wait_may_end_past_the_deadline() -> None:
    calls = Calls(Flaky(retry_after=30), Flaky())
    with pytest.raises(Flaky):
        await run(policy(deadline_seconds=10), calls)
    assert (calls.calls, calls.waits) == (1, [])  # it would have waited past the deadline
    without = Calls(Flaky(retry_after=30))
    assert await run(policy(), without) == "ok"  # no deadline: attempts alone bound it


def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        policy(attempts=0)
