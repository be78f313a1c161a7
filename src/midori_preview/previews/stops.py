"""Ending sandboxes: a stop (by its user, a replace, the quota, GitHub's teardown), the reaper's
claims (idle, expired), retries of stuck stops, builds whose replica died (lease lost), and rows
whose provider sandbox is already gone. Every state change goes through `Transitions`; slots are
freed here."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from midori_preview.clock import Clock
from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.gateway.labels import PreviewLinks
from midori_preview.logging import get_logger
from midori_preview.previews.builds import Builds
from midori_preview.previews.charging import Charger
from midori_preview.previews.deletes import Deletes
from midori_preview.previews.schemas import PreviewStatus
from midori_preview.previews.states import HOLDING, TERMINAL, SandboxStatus
from midori_preview.previews.transitions import Transitions
from midori_preview.previews.views import owned_row, status_of
from midori_preview.providers.base import ProviderError, SandboxProvider
from midori_preview.quota.service import QuotaService

log = get_logger(__name__)
S = SandboxStatus

# Stops that the watching user caused are charged up to the moment of the stop; stops by the
# service (idle, expired, quota, lost …) only up to the last heartbeat, which is already charged.
CHARGED_REASONS = frozenset({"user", "replaced"})


class Stops:
    def __init__(
        self,
        *,
        sandboxes: SandboxRepository,
        transitions: Transitions,
        charger: Charger,
        quota: QuotaService,
        provider: SandboxProvider,
        builds: Builds,
        clock: Clock,
        links: PreviewLinks,
        deletes: Deletes,
    ) -> None:
        self.deletes = deletes  # what fails to delete here, the reaper deletes later
        self.sandboxes = sandboxes
        self.links = links
        self.transitions = transitions
        self.charger = charger
        self.quota = quota
        self.provider = provider
        self.builds = builds
        self.clock = clock

    async def stop(
        self, sandbox_id: str, *, reason: str = "user", user_id: str | None = None
    ) -> PreviewStatus:
        """Stop a sandbox (idempotent): its processes and files are gone when this returns."""
        row = await owned_row(self.sandboxes, sandbox_id, user_id)
        if row.status in TERMINAL:
            return status_of(row, self.links)
        if row.status != S.STOPPING:
            if not await self._claim(row, reason):  # raced with a transition or another stop
                return await self.stop(sandbox_id, reason=reason, user_id=user_id)
            row = await owned_row(self.sandboxes, sandbox_id, None)
        await self.builds.cancel(sandbox_id)
        return await self.finish(row)

    async def _claim(self, row: Sandbox, reason: str) -> bool:
        """Move the row to `stopping`, charging a running one's last seconds when its user's
        stop owes them. False when the row moved meanwhile."""
        now = self.clock.now()
        if row.status == S.RUNNING and await self._close_beats(row, reason, now):
            return await self.transitions.move(
                row.id, (row.status,), S.STOPPING, now=now,
                announce={"reason": reason}, reason=reason, stopped_at=now,
            )  # fmt: skip
        charge = (  # Redis unreachable: charged in Postgres
            await self.charger.plan(row, now, renew_slot=False)
            if row.status == S.RUNNING and reason in CHARGED_REASONS
            else None
        )
        charged: dict[str, Any] = {}
        if charge is not None and charge.entries:  # charged once: CAS on the charged time too
            charged = {"charged_until": charge.charged_until}
        moved = await self.transitions.move(
            row.id, (row.status,), S.STOPPING, now=now,
            expect={"charged_until": row.charged_until} if charged else None,
            entries=charge.entries if charge is not None else (),
            announce={"reason": reason}, reason=reason, stopped_at=now, **charged,
        )  # fmt: skip
        if not moved and charge is not None:
            await self.charger.refund(row.user_id, charge)
        return moved

    async def _close_beats(self, row: Sandbox, reason: str, now: datetime) -> bool:
        """Close a running row's beat record before its stop: no heartbeat charges it after
        this; a stop its user caused charges its last seconds as the record's final link.
        False when Redis is unreachable."""
        try:
            if reason in CHARGED_REASONS:
                await self.charger.beat(
                    row.id, row.user_id, now, visible=None, final=True, renew=False, row=row
                )
            else:
                await self.charger.beats.close(row.id)
        except RedisError:
            return False
        return True

    async def reap(
        self, row: Sandbox, reason: str, *, expect: dict[str, Any] | None = None
    ) -> bool:
        """Claim `row` as read (its state, and the `expect`ed columns: what made it due) and stop
        it; False when another actor got there first."""
        now = self.clock.now()
        if row.status == S.RUNNING:
            seen = row.last_heartbeat_at or row.ready_at or row.created_at
            try:  # no heartbeat charges it from here on; unless one came after it was read
                if not await self.charger.beats.close(
                    row.id, seen=seen if reason == "idle" else None
                ):
                    return False
            except RedisError:
                pass  # the row's compare-and-set alone decides
        moved = await self.transitions.move(
            row.id, (row.status,), S.STOPPING, now=now, expect=expect,
            announce={"reason": reason}, reason=reason, stopped_at=now,
        )  # fmt: skip
        if moved:
            await self.stop(row.id, reason=reason)  # finishes a row already `stopping`
        return moved

    async def finish(self, row: Sandbox) -> PreviewStatus:
        """Delete a `stopping` row's provider sandbox and end it `stopped`; when the delete
        fails the row stays `stopping` and the reaper retries it."""
        if row.provider_id:
            handle = self.provider.attach(row.provider_id, row.id)
            try:
                await self.provider.delete(handle)
            except ProviderError as exc:
                log.warning("sandbox.delete_failed", sandbox_id=row.id, code=exc.code)
                return status_of(row, self.links)
            log.info("sandbox.deleted", sandbox_id=row.id, reason=row.reason)

        async def free() -> None:
            await self.release(row.user_id, row.id)

        await self.transitions.move(
            row.id, (S.STOPPING,), S.STOPPED, announce={"reason": row.reason},
            before_announce=free, lease_owner=None, lease_expires_at=None,
        )  # fmt: skip
        return status_of(await owned_row(self.sandboxes, row.id, None), self.links)

    async def fail_lost_build(self, row: Sandbox) -> bool:
        """End a build whose replica stopped renewing its lease (as read: not renewed since) in
        `error`, deleting what it made; False when the lease was renewed or the row moved."""
        now = self.clock.now()

        async def clean_up() -> None:
            if row.provider_id:
                await self.delete_provider_sandbox(row.provider_id, row.id)
            await self.release(row.user_id, row.id)

        return await self.transitions.move(
            row.id, (row.status,), S.ERROR, now=now,
            expect={"lease_expires_at": row.lease_expires_at},
            announce={"reason": "error:lease_lost"}, before_announce=clean_up,
            reason="error:lease_lost", error_step=str(row.status),
            error_message="the replica building this preview stopped", stopped_at=now,
            lease_owner=None, lease_expires_at=None,
        )  # fmt: skip

    async def close_row(self, row: Sandbox, *, reason: str) -> bool:
        """End a row `stopped` without a provider call (its provider sandbox is already gone)."""
        now = self.clock.now()
        if row.status == S.RUNNING:
            with contextlib.suppress(RedisError):
                await self.charger.beats.close(row.id)

        async def free() -> None:
            await self.release(row.user_id, row.id)

        return await self.transitions.move(
            row.id, HOLDING, S.STOPPED, now=now, announce={"reason": reason},
            before_announce=free, reason=reason, stopped_at=now,
            lease_owner=None, lease_expires_at=None,
        )  # fmt: skip

    async def close_leftovers(self) -> int:
        """At start with a process-bound provider (local): sandboxes of an earlier process died
        with it, so their rows are closed now — not left `running` (and billed) until a sync."""
        closed = 0
        for row in await self.sandboxes.holding_rows():
            if row.provider == self.provider.name and await self.close_row(row, reason="lost"):
                closed += 1
                log.warning("sandbox.lost_on_restart", sandbox_id=row.id, status=row.status)
        return closed

    async def delete_provider_sandbox(self, provider_id: str, sandbox_id: str | None) -> bool:
        """Delete a provider sandbox (ours, or an orphan with no row): False when it failed."""
        try:
            await self.provider.delete(self.provider.attach(provider_id, sandbox_id or provider_id))
        except ProviderError as exc:
            log.warning("sandbox.delete_failed", provider_id=provider_id, code=exc.code)
            await self.deletes.later(
                sandbox_id or provider_id, provider_id, reason="delete_failed", code=exc.code
            )
            return False
        log.info("sandbox.deleted", sandbox_id=sandbox_id, provider_id=provider_id)
        return True

    async def release(self, owner: str, sandbox_id: str) -> None:
        """Free the sandbox's concurrency slot (best effort: sync heals a lost release)."""
        try:
            await self.quota.release_slot(owner, sandbox_id)
        except RedisError:
            log.warning("quota.release_failed", sandbox_id=sandbox_id)
