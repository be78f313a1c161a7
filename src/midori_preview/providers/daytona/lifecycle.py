"""Creating and deleting Daytona sandboxes, as Daytona's server really answers.

Create: retried (after `Retry-After-sandbox-create` on a 429) within its timeout; a create that
failed, timed out or was cancelled deletes what it made — found by our sandbox-id label too,
since a create that timed out may have made a sandbox we never heard of.

Delete: Daytona answers 409 "Sandbox state change in progress" while a sandbox is mid-transition
(`creating`, `pulling_snapshot`, `starting`, …; the delete did nothing), so deletes are retried
until the sandbox is gone or `delete_deadline_seconds` passed. What is still there then is named
in the error's `leftovers`, for the service to hand to the reaper, which keeps trying.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaTimeoutError,
    Resources,
)

from midori_preview.providers.base import (
    ProviderError,
    ProviderNotFound,
    ProviderSandboxInfo,
    ProviderState,
    ProviderTimeout,
    SandboxFailed,
    SandboxSpec,
)
from midori_preview.providers.daytona.config import DaytonaProviderConfig
from midori_preview.providers.daytona.errors import (
    DaytonaRetry,
    is_ambiguous,
    is_retryable,
    retry_after_seconds,
    status_of,
    to_provider_error,
)
from midori_preview.providers.daytona.labels import label_value
from midori_preview.providers.labels import owned_selector, sandbox_labels
from midori_preview.retry import RetryPolicy

log = structlog.get_logger(__name__)

Lister = Callable[[Mapping[str, str]], Coroutine[Any, Any, list[ProviderSandboxInfo]]]


class DaytonaSandboxFailed(SandboxFailed):
    """Daytona put the sandbox in its error state; `error_reason` is its (trimmed) reason."""

    def __init__(self, message: str, *, error_reason: str | None) -> None:
        super().__init__(message)
        self.error_reason = error_reason


class Lifecycle:
    """Create and delete calls of one `AsyncDaytona` client."""

    def __init__(
        self,
        client: AsyncDaytona,
        config: DaytonaProviderConfig,
        retry: DaytonaRetry,
        lister: Lister,
    ) -> None:
        self._client = client
        self._config = config
        self._retry = retry
        self._list = lister
        self._timeout = config.request_timeout_seconds
        policy = retry.policy
        # Deletes wait out Daytona's transitions: many attempts, bounded by their own deadline.
        self._delete_retry = DaytonaRetry(
            RetryPolicy(
                attempts=10_000,
                deadline_seconds=config.delete_deadline_seconds,
                initial_backoff_seconds=policy.initial_backoff_seconds,
                max_backoff_seconds=policy.max_backoff_seconds,
            )
        )

    async def create(self, spec: SandboxSpec, *, timeout: float) -> AsyncSandbox:
        """A started sandbox, or our error with nothing left behind (or named in `leftovers`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._client.create(
                    self._params(spec), timeout=max(0.001, deadline - loop.time())
                )
            except DaytonaError as exc:
                status = status_of(exc)
                if isinstance(exc, DaytonaTimeoutError) and status is None:  # out of time
                    error: ProviderError = ProviderTimeout(
                        f"sandbox creation took over {timeout:g}s"
                    )
                    await self._raise_after_discard(spec, exc.sandbox_id, error)
                if status is None and not isinstance(exc, DaytonaConnectionError):
                    await self._failed_on_the_way(spec, exc)
                if is_ambiguous(exc):  # it may exist even so: never leave a twin behind
                    await self._raise_after_discard(spec, None, None)
                wait = retry_after_seconds(exc) or self._retry.backoff(attempt)
                if (
                    not is_retryable(exc, idempotent=True)
                    or attempt >= self._config.retry_attempts
                    or loop.time() + wait >= deadline
                ):
                    raise to_provider_error(exc, "create sandbox") from None
                log.info("daytona.retry", action="create sandbox", attempt=attempt, wait=wait)
                await asyncio.sleep(wait)

    async def _failed_on_the_way(self, spec: SandboxSpec, exc: DaytonaError) -> None:
        """Accepted, then failed on its way to `started` (`error`, `build_failed`): raise."""
        found, left = await self.discard(spec, None)
        reasons = [i.error_reason for i in found if i.state is ProviderState.ERROR]
        error: ProviderError = (
            DaytonaSandboxFailed("the sandbox failed to start", error_reason=reasons[0])
            if reasons
            else to_provider_error(exc, "create sandbox")
        )
        error.leftovers = left
        raise error from None

    async def _raise_after_discard(
        self, spec: SandboxSpec, provider_id: str | None, error: ProviderError | None
    ) -> None:
        """Delete what a failed create made; raise `error` (naming what is left) if given."""
        _, left = await self.discard(spec, provider_id)
        if error is not None:
            error.leftovers = left
            raise error from None
        if left:  # could not clean up: a retry would add a twin
            failed = ProviderTimeout("create sandbox: Daytona did not settle in time")
            failed.leftovers = left
            raise failed from None

    async def delete(self, provider_id: str, handle: AsyncSandbox | None = None) -> None:
        """Delete a sandbox, waiting out Daytona's transitions (409) until the delete deadline.
        A sandbox already gone is success."""
        try:
            target = handle
            if target is None:
                target = await self._retry.call(
                    "find sandbox",
                    lambda: self._client.get(provider_id, request_timeout=self._timeout),
                )
            sandbox = target
            await self._delete_retry.call(
                "delete sandbox", lambda: sandbox.delete(timeout=self._timeout), conflict=True
            )
        except ProviderNotFound:
            pass  # already gone: that is what we wanted

    async def discard(
        self, spec: SandboxSpec, provider_id: str | None
    ) -> tuple[list[ProviderSandboxInfo], tuple[str, ...]]:
        """Delete whatever a failed create left behind: what carried our sandbox id, and the
        provider ids that could not be deleted."""
        found: list[ProviderSandboxInfo] = []
        ids: set[str] = {provider_id} if provider_id is not None else set()
        try:
            found = await self._list(
                owned_selector(self._config.deployment, sandbox_id=spec.sandbox_id)
            )
        except ProviderError as exc:
            log.warning("daytona.leftover_not_listed", sandbox_id=spec.sandbox_id, code=exc.code)
        ids |= {info.provider_id for info in found}
        left: list[str] = []
        for each in sorted(ids):
            try:
                await self.delete(each)
                log.info("daytona.leftover_deleted", sandbox_id=spec.sandbox_id, provider_id=each)
            except ProviderError as exc:
                left.append(each)
                log.warning(
                    "daytona.leftover_not_deleted",
                    sandbox_id=spec.sandbox_id,
                    provider_id=each,
                    code=exc.code,
                )
        return found, tuple(left)

    def _params(
        self, spec: SandboxSpec
    ) -> CreateSandboxFromSnapshotParams | CreateSandboxFromImageParams:
        cfg = self._config
        ours = sandbox_labels(
            deployment=cfg.deployment,
            sandbox_id=spec.sandbox_id,
            user_id=spec.user_id,
            project_id=spec.project_id,
        )
        labels = {key: label_value(value) for key, value in {**spec.labels, **ours}.items()}
        common = {
            "labels": labels,
            "env_vars": dict(spec.env),
            "public": False,
            "auto_stop_interval": cfg.auto_stop_minutes,
            "auto_delete_interval": 0,  # deleted as soon as it stops
        }
        if cfg.image is not None:
            resources = Resources(cpu=cfg.cpu, memory=cfg.memory, disk=cfg.disk)
            return CreateSandboxFromImageParams(image=cfg.image, resources=resources, **common)
        return CreateSandboxFromSnapshotParams(snapshot=cfg.snapshot, **common)
