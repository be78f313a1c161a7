"""The reaper's stops, a batch of due rows at a time (idle, expired): what `Stops.reap` does for
one row, with the round trips shared by the batch.

1. The running rows' beat records are closed in one script call (`BeatStore.close_many`):
   no heartbeat charges them from here on — except a row an idle stop read before a heartbeat
   came, which stays open and is left running.
2. The rest are claimed `stopping` in ONE compare-and-set UPDATE (`Transitions.move_many`): each
   row only if it is still in its state as read and, for an idle stop, its `last_heartbeat_at` is
   still the one read (a heartbeat written since keeps it running). Their `status` events go out
   in one script call.
3. Their provider sandboxes are deleted concurrently, at most REAPER_CONCURRENCY at a time. A row
   whose delete fails stays `stopping` (the reaper retries it: `stuck_stopping_rows`), as after a
   single stop's failed delete.
4. The deleted ones end `stopped` in one more UPDATE; their slots are freed in one Redis round
   trip before their events are published.

Idle and expired stops charge nothing beyond the last heartbeat (`stops.CHARGED_REASONS`), so
no usage is written here: heartbeats queued before a record was closed are written behind by
the flush as always (a compare-and-set on `charged_until`, whatever the row's state)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime

from redis.exceptions import RedisError

from midori_preview.clock import Clock
from midori_preview.db.models import Sandbox
from midori_preview.logging import get_logger
from midori_preview.previews.builds import Builds
from midori_preview.previews.states import SandboxStatus
from midori_preview.previews.stops import Stops
from midori_preview.previews.transitions import Transitions
from midori_preview.providers.base import ProviderError, SandboxProvider
from midori_preview.quota.beats import BeatStore
from midori_preview.quota.service import QuotaService

log = get_logger(__name__)
S = SandboxStatus


class Reaping:
    def __init__(
        self,
        *,
        transitions: Transitions,
        beats: BeatStore,
        quota: QuotaService,
        provider: SandboxProvider,
        builds: Builds,
        stops: Stops,
        clock: Clock,
        concurrency: int,
    ) -> None:
        self.transitions = transitions
        self.beats = beats
        self.quota = quota
        self.provider = provider
        self.builds = builds
        self.stops = stops  # a row that is not running (an expired build) is stopped alone
        self.clock = clock
        self._slots = asyncio.Semaphore(concurrency)  # provider deletes in flight

    async def reap(self, rows: Sequence[Sandbox], reason: str) -> list[Sandbox]:
        """Stop each of `rows` that is still as read (its state; for `idle`, no heartbeat since
        it was read): the rows this caller claimed. Those whose provider delete failed are
        left `stopping` (retried later); the rest end `stopped`, their slots free."""
        running = [row for row in rows if row.status == S.RUNNING]
        others = [row for row in rows if row.status != S.RUNNING]
        claimed = await self._claim(running, reason)
        for row in claimed:
            await self.builds.cancel(row.id)  # none runs for a running row: no round trip
        deleted = await asyncio.gather(
            *(self._delete(row, reason) for row in claimed),
            *(self._reap_alone(row, reason) for row in others),
        )
        gone = [row for row, ok in zip(claimed, deleted[: len(claimed)], strict=True) if ok]
        owners = {row.id: row.user_id for row in gone}

        async def free(ids: list[str]) -> None:
            await self._release([(owners[sandbox_id], sandbox_id) for sandbox_id in ids])

        await self.transitions.move_many(
            [(row.id, S.STOPPING) for row in gone], S.STOPPED, announce={"reason": reason},
            before_announce=free, lease_owner=None, lease_expires_at=None,
        )  # fmt: skip
        alone = [row for row, ok in zip(others, deleted[len(claimed) :], strict=True) if ok]
        return claimed + alone

    async def _claim(self, rows: list[Sandbox], reason: str) -> list[Sandbox]:
        """Close the rows' beat records, then claim them `stopping` (as `Stops.reap` does)."""
        if not rows:
            return []
        now = self.clock.now()
        idle = reason == "idle"
        try:  # no heartbeat charges them from here on; unless one came after it was read
            fresh = await self.beats.close_many(
                [(row.id, _seen(row) if idle else None) for row in rows]
            )
        except RedisError:
            fresh = set()  # the rows' compare-and-set alone decides
        rows = [row for row in rows if row.id not in fresh]
        expect = {"last_heartbeat_at": {row.id: row.last_heartbeat_at for row in rows}}
        claims = [(row.id, row.status) for row in rows]
        moved = await self.transitions.move_many(
            claims, S.STOPPING, now=now, expect=expect if idle else None,
            announce={"reason": reason}, reason=reason, stopped_at=now,
        )  # fmt: skip
        mine = set(moved)
        return [row for row in rows if row.id in mine]

    async def _delete(self, row: Sandbox, reason: str) -> bool:
        """Delete a claimed row's provider sandbox: False when that failed (left `stopping`)."""
        if row.provider_id:
            async with self._slots:
                try:
                    await self.provider.delete(self.provider.attach(row.provider_id, row.id))
                except ProviderError as exc:
                    log.warning("sandbox.delete_failed", sandbox_id=row.id, code=exc.code)
                    return False
            log.info("sandbox.deleted", sandbox_id=row.id, reason=reason)
        return True

    async def _reap_alone(self, row: Sandbox, reason: str) -> bool:
        async with self._slots:
            return await self.stops.reap(row, reason)

    async def _release(self, slots: list[tuple[str, str]]) -> None:
        """Free the slots (best effort: sync heals a lost release)."""
        try:
            await self.quota.release_slots(slots)
        except RedisError:
            for _, sandbox_id in slots:
                log.warning("quota.release_failed", sandbox_id=sandbox_id)


def _seen(row: Sandbox) -> datetime:
    """When the row was last known watched (as `db.models.SEEN_AT` computes it)."""
    return row.last_heartbeat_at or row.ready_at or row.created_at
