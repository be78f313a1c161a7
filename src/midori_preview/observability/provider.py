"""The sandbox provider with every call timed and every failure counted by kind (our error
code), whatever the provider: built around the concrete one in `bootstrap.py`, so no provider
knows about metrics."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, cast

from midori_preview.errors import ServiceError
from midori_preview.observability.context import WALL
from midori_preview.observability.metrics import PROVIDER_CALLS, PROVIDER_ERRORS
from midori_preview.providers.base import SandboxProvider

TIMED = frozenset(
    {
        "create", "upload", "exec", "start_server", "clone", "keep_alive", "probe",
        "preview_link", "upstream", "delete", "list_sandboxes",
    }
)  # fmt: skip


class InstrumentedProvider:
    """Forwards everything to `inner`; the calls in TIMED are timed and their errors counted."""

    def __init__(self, inner: SandboxProvider) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.inner, name)
        if name not in TIMED or not callable(value):
            return value
        return _timed(self.inner.name, name, value)


def _timed(
    provider: str, operation: str, call: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(call)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = WALL.monotonic()
        try:
            return await call(*args, **kwargs)
        except Exception as exc:
            kind = exc.code if isinstance(exc, ServiceError) else type(exc).__name__
            PROVIDER_ERRORS.labels(provider, operation, kind).inc()
            raise
        finally:
            PROVIDER_CALLS.labels(provider, operation).observe(WALL.monotonic() - started)

    return timed


def instrumented(provider: SandboxProvider) -> SandboxProvider:
    return cast(SandboxProvider, InstrumentedProvider(provider))
