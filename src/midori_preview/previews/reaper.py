"""The reaper: stops idle and expired sandboxes, fails builds whose owner stopped renewing its
lease, retries stuck stops, retires old rows, prunes ephemeral state, and reconciles with the
provider (orphans, lost sandboxes, Redis slots and usage mirrors rebuilt from Postgres).

Safe with several replicas: one pass at a time across replicas (a Redis lock), and every row is
claimed with a conditional update before the provider is called, so nothing is acted on twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import LockError, RedisError

from midori_preview.clock import Clock
from midori_preview.db.idempotency import IdempotencyRepository
from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import Key, SandboxRepository
from midori_preview.db.service_state import ServiceStateRepository
from midori_preview.db.usage import UsageRepository
from midori_preview.errors import QuotaUnavailable
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_reaper
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import LIVE
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from midori_preview.usage import day_of

log = get_logger(__name__)

STATE_KEY = "reaper"
REAPER_JOB = "reaper"  # the scheduler's job id (admin stats read its next run)
KEEP_ALIVE_EVERY_SECONDS = 60
ALWAYS_COUNTED = ("retired", "idempotencyKeysPruned")


def seen_at(row: Sandbox) -> datetime:
    """When a running row was last known watched (as `db.models.SEEN_AT` computes it)."""
    return row.last_heartbeat_at or row.ready_at or row.created_at


class Reaper:
    def __init__(
        self,
        *,
        settings: Settings,
        sandboxes: SandboxRepository,
        usage: UsageRepository,
        idempotency: IdempotencyRepository,
        service_state: ServiceStateRepository,
        quota: QuotaService,
        events: EventBus,
        service: PreviewService,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.usage = usage
        self.idempotency = idempotency
        self.service_state = service_state
        self.quota = quota
        self.events = events
        self.service = service  # every action on a sandbox goes through its public methods
        self.clock = clock
        self.lock_name = f"{quota.prefix}:lock:reaper"
        self._kept_alive_at: float | None = None  # clock.monotonic() of the last sweep
        self._slots = asyncio.Semaphore(settings.reaper_concurrency)

    # --- switches shared by all replicas ----------------------------------------------------

    async def is_paused(self) -> bool:
        state = await self.service_state.get(STATE_KEY) or {}
        return bool(state.get("paused", False))

    async def set_paused(self, paused: bool) -> None:
        state = await self.service_state.get(STATE_KEY) or {}
        state["paused"] = paused
        await self.service_state.set(STATE_KEY, state, self.clock.now())

    async def last_run(self) -> dict[str, Any]:
        return await self.service_state.get(STATE_KEY) or {}

    # --- passes -----------------------------------------------------------------------------

    async def tick(self) -> dict[str, Any] | None:
        """The scheduled job: a pass unless paused; sync too when it is due."""
        if await self.is_paused():
            return None
        counts = await self.run_pass()
        if "skipped" in counts:
            return counts
        state = await self.last_run()
        last_sync = state.get("lastSyncAt")
        due = (
            last_sync is None
            or (self.clock.now() - datetime.fromisoformat(last_sync)).total_seconds()
            >= self.settings.reaper_sync_interval_seconds
        )
        if due:
            counts["sync"] = await self.sync()
        return counts

    @asynccontextmanager
    async def _exclusive(self, name: str) -> AsyncIterator[bool]:
        """One replica at a time: yields False when another one holds `name`. Without Redis it
        yields True: rows are still claimed one by one by compare-and-set."""
        try:
            lock = self.quota.redis.lock(
                f"{self.lock_name}:{name}",
                timeout=max(self.settings.reaper_interval_seconds * 4, 60),
            )
            if not await lock.acquire(blocking=False):
                yield False
                return
        except RedisError:
            lock = None
        try:
            yield True
        finally:
            if lock is not None:
                with contextlib.suppress(LockError, RedisError):
                    await lock.release()  # expired: nothing to release

    async def flush_heartbeats(self) -> None:
        """The scheduled job: heartbeats queued in Redis written to Postgres."""
        try:
            await self.service.flush_heartbeats()
        except Exception:
            log.exception("heartbeats.flush_failed")  # the batch stays in Redis: next time

    async def run_pass(self) -> dict[str, Any]:
        """One cleanup pass now (one replica at a time)."""
        started = self.clock.monotonic()
        async with self._exclusive("pass") as mine:
            if not mine:
                return {"skipped": "another replica is running a pass"}
            flushed = await self.service.flush_heartbeats()  # the rows show every heartbeat
            counts = await self._pass()
        if flushed["links"]:
            counts["heartbeatsFlushed"] = flushed["links"]
        counts["durationMs"] = round((self.clock.monotonic() - started) * 1000, 1)
        log.info("cleanup.pass", **counts)
        record_reaper("pass", counts)
        state = await self.last_run()
        state.update({"lastRunAt": self.clock.now().isoformat(), "lastRun": counts})
        await self.service_state.set(STATE_KEY, state, self.clock.now())
        return counts

    async def _pass(self) -> dict[str, Any]:
        s = self.settings
        now = self.clock.now()
        counts: Counter[str] = Counter()
        for visible, allowance in (
            (True, s.idle_timeout_seconds),
            (False, s.hidden_idle_timeout_seconds),
        ):
            counts["idle"] += await self._reap_idle_rows(visible, now, allowance)
        counts["expired"] += await self._each_due(
            lambda after: self.sandboxes.expired_rows(now, after=after, limit=s.reaper_batch_size),
            lambda row: (row.expires_at, row.id),
            self._reap_expired,
        )
        counts["leaseLost"] += await self._each_due(
            lambda after: self.sandboxes.stale_lease_rows(
                now, after=after, limit=s.reaper_batch_size
            ),
            lambda row: (now, row.id),
            self._one_by_one(self._fail_lost_build),
        )
        stuck_before = now - timedelta(seconds=60)
        counts["stopRetried"] += await self._each_due(
            lambda after: self.sandboxes.stuck_stopping_rows(
                stuck_before, after=after, limit=s.reaper_batch_size
            ),
            lambda row: (row.updated_at, row.id),
            self._one_by_one(self._retry_stop),
        )
        counts["keptAlive"] += await self._keep_watched_alive(now)
        for outcome, n in (await self.service.drain_deletes()).items():
            counts[f"deletes{outcome.capitalize()}"] += n  # deletesDone, deletesWaiting
        counts["retired"] = await self.sandboxes.retire_stopped(
            now - timedelta(seconds=s.stopped_retention_seconds)
        )
        # Ephemeral state: idempotency keys past IDEMPOTENCY_TTL_SECONDS here; event streams
        # carry their own Redis TTL (STATE_RETENTION_SECONDS), the `memory` action sweeps any
        # left over.
        counts["idempotencyKeysPruned"] = await self.idempotency.prune(
            now - timedelta(seconds=s.idempotency_ttl_seconds)
        )
        return {k: v for k, v in counts.items() if v or k in ALWAYS_COUNTED}

    async def _reap_idle_rows(self, visible: bool, now: datetime, allowance: int) -> int:
        cutoff = now - timedelta(seconds=allowance)
        return await self._each_due(
            lambda after: self.sandboxes.idle_rows(
                visible=visible,
                seen_before=cutoff,
                after=after,
                limit=self.settings.reaper_batch_size,
            ),
            lambda row: (seen_at(row), row.id),
            lambda rows: self._reap_idle(rows, now),
        )

    async def _each_due(
        self,
        fetch: Callable[[Key | None], Awaitable[list[Sandbox]]],
        key: Callable[[Sandbox], Key],
        act: Callable[[list[Sandbox]], Coroutine[Any, Any, int]],
    ) -> int:
        """Act on every due row, a bounded batch at a time (`act` takes the batch and says how
        many it acted on), until a query finds none left: no number of healthy rows can hide a
        due one. Keyset order, so a row that could not be acted on is not read again in this
        pass. The next batch is read and acted on while the one before finishes (its provider
        calls are in flight): at most two batches at once."""
        done = 0
        after: Key | None = None
        acting: list[asyncio.Task[int]] = []
        try:
            while True:
                rows = await fetch(after)
                if rows:
                    acting.append(asyncio.create_task(act(rows)))
                if len(acting) == 2:
                    done += await acting.pop(0)
                if len(rows) < self.settings.reaper_batch_size:
                    break
                after = key(rows[-1])
            while acting:
                done += await acting.pop(0)
        finally:
            for task in acting:  # a batch failed: the other one is not left running
                task.cancel()
            await asyncio.gather(*acting, return_exceptions=True)
        return done

    def _one_by_one(
        self, act: Callable[[Sandbox], Awaitable[bool]]
    ) -> Callable[[list[Sandbox]], Coroutine[Any, Any, int]]:
        """A batch's rows acted on one at a time, at most REAPER_CONCURRENCY at once."""

        async def bounded(row: Sandbox) -> bool:
            async with self._slots:
                return await act(row)

        async def each(rows: list[Sandbox]) -> int:
            return sum(await asyncio.gather(*(bounded(row) for row in rows)))

        return each

    async def _reap_idle(self, rows: list[Sandbox], now: datetime) -> int:
        # each claimed only if no heartbeat arrived since it was read
        reaped = await self.service.reap_many(rows, "idle")
        for row in reaped:
            idle = int((now - seen_at(row)).total_seconds())
            log.info("cleanup.idle", sandbox_id=row.id, idle_seconds=idle, visible=row.visible)
        return len(reaped)

    async def _reap_expired(self, rows: list[Sandbox]) -> int:
        reaped = await self.service.reap_many(rows, "expired")
        for row in reaped:
            log.info("cleanup.expired", sandbox_id=row.id)
        return len(reaped)

    async def _fail_lost_build(self, row: Sandbox) -> bool:
        if row.id in self.service.builds_in_flight():
            return False  # built in this very process: alive by definition
        if not await self.service.fail_lost_build(row):
            return False
        log.warning("cleanup.lease_lost", sandbox_id=row.id, step=row.status)
        return True

    async def _retry_stop(self, row: Sandbox) -> bool:
        await self.service.retry_stop(row)
        return True

    async def _keep_watched_alive(self, now: datetime) -> int:
        """Watched sandboxes reset the provider's own idle auto-stop, one sweep a minute per
        replica: Daytona counts preview traffic as activity, but a watched page that fetches
        nothing makes none (heartbeats are what say someone watches)."""
        if not self.service.keeps_idle_clock:
            return 0
        last = self._kept_alive_at
        if last is not None and self.clock.monotonic() - last < KEEP_ALIVE_EVERY_SECONDS:
            return 0
        self._kept_alive_at = self.clock.monotonic()
        s = self.settings
        cutoff = now - timedelta(seconds=min(s.idle_timeout_seconds, KEEP_ALIVE_EVERY_SECONDS * 2))
        return await self._each_due(
            lambda after: self.sandboxes.watched_rows(
                seen_after=cutoff, after=after, limit=s.reaper_batch_size
            ),
            lambda row: (seen_at(row), row.id),
            self._one_by_one(self.service.keep_alive),
        )

    # --- reconcile --------------------------------------------------------------------------

    async def sync(self) -> dict[str, Any]:
        """Reconcile with the provider and rebuild Redis state from Postgres (one replica at a
        time)."""
        async with self._exclusive("sync") as mine:
            if not mine:
                return {"skipped": "another replica is syncing"}
            return await self._sync()

    async def _sync(self) -> dict[str, Any]:
        counts: Counter[str] = Counter()
        now = self.clock.now()
        # Rows first: any row read here got its provider sandbox before the listing below.
        rows = await self.sandboxes.holding_rows()
        listed = await self.service.provider_sandboxes()
        listed_ids = {info.provider_id for info in listed}
        known = await self.sandboxes.holding_ids([i.sandbox_id for i in listed if i.sandbox_id])
        grace = timedelta(seconds=self.settings.orphan_grace_seconds)
        for info in listed:
            if info.sandbox_id in known:
                continue
            age_ok = info.created_at is None or info.created_at <= now - grace
            if age_ok and await self.service.delete_orphan(info):
                counts["orphans"] += 1
                log.info("cleanup.orphan", provider_id=info.provider_id, sandbox_id=info.sandbox_id)
        # Listings lag (Daytona's are eventually consistent): a sandbox younger than the lag
        # may be missing from one. Its creation precedes the row's ready_at / last update.
        lag_cutoff = now - timedelta(seconds=self.service.list_lag_seconds)
        for row in rows:
            gone = row.provider_id and row.status in LIVE and row.provider_id not in listed_ids
            gone = gone and (row.ready_at or row.updated_at) <= lag_cutoff
            if gone and await self.service.close_lost(row):
                counts["lost"] += 1
                log.warning("cleanup.lost", sandbox_id=row.id)
        try:
            counts.update(await self.rebuild_redis())
        except RedisError:
            counts["redisUnavailable"] = 1  # the next sync rebuilds it
        state = await self.last_run()
        state["lastSyncAt"] = now.isoformat()
        state["lastSync"] = dict(counts)
        await self.service_state.set(STATE_KEY, state, now)
        log.info("cleanup.sync", **counts)
        record_reaper("sync", counts)
        return dict(counts)

    async def rebuild_redis(self) -> dict[str, int]:
        """Slots and today's usage mirrors from Postgres (after a Redis flush or failover)."""
        counts: Counter[str] = Counter()
        lease = self.service.slot_lease_seconds
        owners = set(await self.quota.slot_owners())
        owners |= {row.user_id for row in await self.sandboxes.holding_rows() if row.status in LIVE}
        for owner in sorted(owners):
            # Under the owner's create lock, reading the rows inside it: a create that holds its
            # new slot but has not written its row yet must not lose that slot to this rebuild.
            try:
                async with self.quota.user_lock(owner):
                    live = [row.id for row in await self.sandboxes.live_for_user(owner)]
                    await self.quota.replace_slots(owner, live, lease)
            except QuotaUnavailable:
                counts["slotsSkipped"] += 1  # busy for 15 s or Redis gone: the next sync
                continue
            counts["slotsRebuilt"] += 1
        today = day_of(self.clock.now(), self.service.tz)
        for user_id, seconds in (await self.usage.by_user_for_day(today)).items():
            await self.quota.raise_usage(user_id, today, seconds)
            counts["usageMirrors"] += 1
        return dict(counts)

    async def prune_memory(self) -> dict[str, int]:
        """Drop ephemeral state: idempotency keys past IDEMPOTENCY_TTL_SECONDS, event streams
        older than STATE_RETENTION_SECONDS."""
        now = self.clock.now()
        keys = await self.idempotency.prune(
            now - timedelta(seconds=self.settings.idempotency_ttl_seconds)
        )
        cutoff = now - timedelta(seconds=self.settings.state_retention_seconds)
        streams = await self.events.delete_older_than(int(cutoff.timestamp() * 1000))
        log.info("cleanup.memory", idempotency_keys=keys, event_streams=streams)
        return {"idempotencyKeys": keys, "eventStreams": streams}
