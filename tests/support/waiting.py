"""Waiting for a condition in real time, with a bound and a clear failure: for what no test clock
moves (processes, sockets, Redis' own clock, builds in flight). Never a fixed sleep."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

# Far above any build of the suite (the slowest, a cold-cache `npm ci` + `vite build`, may take
# minutes), yet under pytest's own 300 s timeout: a build that never settles fails here, naming
# itself, instead of being killed there without a word.
SETTLE_SECONDS = 240.0


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 10.0,
    what: str,
    interval: float = 0.02,
) -> None:
    """Return once `check()` (plain or async) is true; fail naming `what` after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {within:g} s")
        await asyncio.sleep(interval)


async def port_refuses(port: int) -> bool:
    """Whether a connection to 127.0.0.1:`port` is refused (nothing listens there any more).

    A connection that is accepted and then reset (or answered) means a listener was still there:
    a process killed a moment ago may hold its socket until the kernel has finished with it."""
    try:
        async with asyncio.timeout(1):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    except TimeoutError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return False


async def builds_settle(service: Any, *, within: float = SETTLE_SECONDS) -> None:
    """Wait until `service` (a PreviewService) has no build in flight; fail after `within` s,
    naming the builds (a step that hangs must not hang the suite)."""
    idle = asyncio.ensure_future(service.wait_idle())
    done, _ = await asyncio.wait({idle}, timeout=within)
    if not done:
        # Left running: the app's shutdown cancels the builds, which ends this wait too.
        pytest.fail(f"builds still running after {within:g} s: {service.builds_in_flight()}")
    idle.result()
