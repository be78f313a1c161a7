"""Provider deletes that nothing forgets.

A delete can fail for a while (Daytona answers 409 while a sandbox is mid-transition, or does not
answer): what the provider could not delete within its own retries is written to
`pending_deletes`, and every reaper pass drains what is due — retrying with a growing wait until
the sandbox is gone. An entry without a provider id (a create that timed out before naming its
sandbox) stands for everything carrying our sandbox-id label, and is done only once a listing,
old enough for the provider's lag, finds nothing left.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from midori_preview.clock import Clock
from midori_preview.db.models import PendingDelete
from midori_preview.db.pending_deletes import PendingDeleteRepository
from midori_preview.logging import get_logger
from midori_preview.providers.base import ProviderError, ProviderSandbox, SandboxProvider
from midori_preview.providers.labels import owned_selector

log = get_logger(__name__)

MAX_WAIT_SECONDS = 600


class Deletes:
    def __init__(
        self,
        *,
        repo: PendingDeleteRepository,
        provider: SandboxProvider,
        clock: Clock,
        deployment: str,
        list_lag_seconds: float,
        retry_seconds: float,
    ) -> None:
        self.repo = repo
        self.provider = provider
        self.clock = clock
        self.deployment = deployment
        self.list_lag_seconds = list_lag_seconds
        self.retry_seconds = retry_seconds

    async def delete(self, handle: ProviderSandbox, *, reason: str) -> bool:
        """Delete now; when that fails, hand it to the reaper (True: gone now)."""
        try:
            await self.provider.delete(handle)
        except ProviderError as exc:
            log.warning("sandbox.delete_failed", sandbox_id=handle.sandbox_id, code=exc.code)
            await self.later(handle.sandbox_id, handle.provider_id, reason=reason, code=exc.code)
            return False
        log.info("sandbox.deleted", sandbox_id=handle.sandbox_id, reason=reason)
        return True

    async def later(
        self, sandbox_id: str, provider_id: str | None, *, reason: str, code: str | None = None
    ) -> None:
        """Hand a delete to the reaper (`provider_id` None: whatever carries `sandbox_id`)."""
        await self.repo.add(
            provider=self.provider.name, provider_id=provider_id, sandbox_id=sandbox_id,
            reason=reason, now=self.clock.now(), code=code,
        )  # fmt: skip
        log.info("sandbox.delete_pending", sandbox_id=sandbox_id, provider_id=provider_id)

    async def drain(self, limit: int = 100) -> dict[str, int]:
        """One round over the due deletes: how many are done and how many wait on."""
        counts: Counter[str] = Counter()
        for entry in await self.repo.due(self.provider.name, self.clock.now(), limit):
            code = await self._attempt(entry)
            if code is None:
                await self.repo.done(entry.id)
                counts["done"] += 1
                log.info("cleanup.pending_delete_done", sandbox_id=entry.sandbox_id)
                continue
            wait = min(MAX_WAIT_SECONDS, self.retry_seconds * 2 ** min(entry.attempts, 10))
            until = self.clock.now() + timedelta(seconds=wait)
            await self.repo.postpone(entry.id, attempts=entry.attempts + 1, until=until, code=code)
            counts["waiting"] += 1
        return dict(counts)

    async def _attempt(self, entry: PendingDelete) -> str | None:
        """Delete what the entry stands for: None once it is all gone, else why not."""
        ids = {entry.provider_id} if entry.provider_id else set()
        try:
            if entry.provider_id is None:
                selector = owned_selector(self.deployment, sandbox_id=entry.sandbox_id)
                ids |= {info.provider_id for info in await self.provider.list_sandboxes(selector)}
            for provider_id in sorted(ids):
                await self.provider.delete(self.provider.attach(provider_id, entry.sandbox_id))
                log.info("sandbox.deleted", sandbox_id=entry.sandbox_id, provider_id=provider_id)
        except ProviderError as exc:
            return exc.code
        if entry.provider_id is None:
            age = (self.clock.now() - entry.created_at).total_seconds()
            if ids or age < self.list_lag_seconds:  # a fresh sandbox may not be listed yet
                return "listing_lag"
        return None
