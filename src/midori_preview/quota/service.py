"""QuotaService: concurrency slots, create rate limits and the daily-usage mirror, all in Redis.

Postgres stays the truth for usage; Redis is a fast mirror that is rebuilt from it when lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.exceptions import LockError, RedisError

from midori_preview.errors import QuotaUnavailable
from midori_preview.quota import scripts


@dataclass(frozen=True, slots=True)
class SlotResult:
    granted: bool
    holders: list[str]


class QuotaService:
    def __init__(self, redis: Any, *, prefix: str, usage_ttl_seconds: int = 3 * 86400) -> None:
        self.redis = redis
        self.prefix = prefix
        self.usage_ttl = usage_ttl_seconds
        self._acquire = redis.register_script(scripts.ACQUIRE_SLOT)
        self._renew = redis.register_script(scripts.RENEW_SLOTS)
        self._rate = redis.register_script(scripts.RATE_LIMIT)
        self._raise_usage = redis.register_script(scripts.RAISE_USAGE)
        self._heartbeat = redis.register_script(scripts.HEARTBEAT)
        # One user's admissions in this process queue here first, so that only one of them at a
        # time waits on (polls) the Redis lock that serializes them across replicas.
        self._local: dict[str, tuple[asyncio.Lock, int]] = {}

    # --- keys -----------------------------------------------------------------------------

    def slots_key(self, owner: str) -> str:
        return f"{self.prefix}:slots:{owner}"

    def usage_key(self, user_id: str, day: str) -> str:
        return f"{self.prefix}:usage:{user_id}:{day}"

    # --- slots ----------------------------------------------------------------------------

    async def acquire_slot(
        self, owner: str, sandbox_id: str, *, limit: int, lease_seconds: int
    ) -> SlotResult:
        res = await self._acquire(
            keys=[self.slots_key(owner)], args=[sandbox_id, limit, lease_seconds * 1000]
        )
        granted = int(res[0]) == 1
        return SlotResult(granted, [] if granted else [str(x) for x in res[1:]])

    async def renew_slots(self, owner: str, sandbox_ids: Iterable[str], lease_seconds: int) -> None:
        ids = list(sandbox_ids)
        if ids:
            await self._renew(keys=[self.slots_key(owner)], args=[lease_seconds * 1000, *ids])

    async def release_slot(self, owner: str, sandbox_id: str) -> None:
        await self.redis.zrem(self.slots_key(owner), sandbox_id)

    async def release_slots(self, slots: Sequence[tuple[str, str]]) -> None:
        """Free many (owner, sandbox id) slots in one round trip."""
        if slots:
            async with self.redis.pipeline(transaction=False) as pipe:
                for owner, sandbox_id in slots:
                    pipe.zrem(self.slots_key(owner), sandbox_id)
                await pipe.execute()

    async def slot_holders(self, owner: str) -> list[str]:
        return [str(m) for m in await self.redis.zrange(self.slots_key(owner), 0, -1)]

    async def replace_slots(self, owner: str, sandbox_ids: list[str], lease_seconds: int) -> None:
        """Make the owner's slots exactly `sandbox_ids` (sync rebuilds them from Postgres)."""
        key = self.slots_key(owner)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            await pipe.execute()
        await self.renew_slots(owner, sandbox_ids, lease_seconds)

    async def slot_owners(self) -> list[str]:
        prefix = self.slots_key("")
        return [k[len(prefix) :] async for k in self.redis.scan_iter(match=prefix + "*")]

    # --- rate limit -----------------------------------------------------------------------

    async def hit_rate_limit(self, user_id: str, *, per_minute: int, bucket: str = "rate") -> int:
        """Count one request (a create; `bucket` names another limit, e.g. updates); 0 when
        allowed, else the seconds to wait."""
        key = f"{self.prefix}:{bucket}:{user_id}"
        res = await self._rate(keys=[key], args=[per_minute, 60])
        return 0 if int(res[0]) == 1 else int(res[1])

    # --- usage mirror ---------------------------------------------------------------------

    async def used_seconds(
        self, user_id: str, day: str, from_db: Callable[[], Awaitable[int]]
    ) -> int:
        key = self.usage_key(user_id, day)
        value = await self.redis.get(key)
        if value is not None:
            return int(value)
        total = await from_db()
        await self.redis.set(key, total, ex=self.usage_ttl, nx=True)
        return total

    async def reserve_usage(
        self,
        user_id: str,
        day: str,
        seconds: int,
        *,
        cap: int,
        renew: tuple[str, str, int] | None = None,
    ) -> tuple[int, int] | None:
        """Reserve up to `seconds` of the day's remaining time (and renew `renew` = (owner,
        sandbox id, lease seconds)'s slot) in one atomic call: (granted, total after), or None
        when Redis lost the mirror."""
        owner, sandbox_id, lease = renew or ("", "", 0)
        res = await self._heartbeat(
            keys=[self.usage_key(user_id, day), self.slots_key(owner)],
            args=[seconds, cap, self.usage_ttl, sandbox_id, lease * 1000],
        )
        granted, total = int(res[0]), int(res[1])
        return None if granted < 0 else (granted, total)

    async def refund_usage(self, user_id: str, day: str, seconds: int) -> None:
        """Give back a reservation whose charge did not commit (a duplicate heartbeat)."""
        if seconds > 0:
            await self.redis.decrby(self.usage_key(user_id, day), seconds)

    async def raise_usage(self, user_id: str, day: str, seconds: int) -> int:
        """Set the mirror from a Postgres total, never below what it already holds: a charge that
        committed after the total was read may already be in it (the mirror never runs ahead of
        the ledger, so the larger value is the truer one)."""
        key = self.usage_key(user_id, day)
        return int(await self._raise_usage(keys=[key], args=[seconds, self.usage_ttl]))

    # --- locks ----------------------------------------------------------------------------

    @asynccontextmanager
    async def user_lock(self, user_id: str, *, timeout: float = 15, wait: float = 15) -> Any:
        """Serialize one user's admissions across replicas (idempotency, same-source, quota):
        in this process on a FIFO asyncio lock, across replicas on a Redis lock; `wait` bounds
        both (then 503, retryable). The Redis lock is kept alive while held (renewed every
        `timeout`/3): a holder slowed by load never loses it to the next in line, and a holder
        that died frees it within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with self._local_lock(user_id, wait):
            lock = self.redis.lock(
                f"{self.prefix}:lock:create:{user_id}",
                timeout=timeout,
                blocking_timeout=max(deadline - loop.time(), 0.001),
                sleep=0.01,  # only one waiter per process polls: at Redis speed, not 10 a second
            )
            try:
                acquired = await lock.acquire()
            except RedisError as exc:
                raise QuotaUnavailable("Quota store unreachable; try again shortly.") from exc
            if not acquired:
                raise QuotaUnavailable("Too many concurrent requests for this user; try again.")
            keeper = asyncio.create_task(_keep_alive(lock, timeout / 3))
            try:
                yield
            finally:
                keeper.cancel()  # a renewal racing the release finds the lock not ours: no-op
                with contextlib.suppress(LockError, RedisError):
                    await lock.release()  # expired or unreachable: it times out by itself

    @asynccontextmanager
    async def _local_lock(self, user_id: str, wait: float) -> Any:
        lock, users = self._local.get(user_id) or (asyncio.Lock(), 0)
        self._local[user_id] = (lock, users + 1)
        try:
            try:
                async with asyncio.timeout(wait):
                    await lock.acquire()
            except TimeoutError:
                raise QuotaUnavailable(
                    "Too many concurrent requests for this user; try again."
                ) from None
            try:
                yield
            finally:
                lock.release()
        finally:
            lock, users = self._local[user_id]
            if users == 1:
                del self._local[user_id]
            else:
                self._local[user_id] = (lock, users - 1)

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except RedisError:
            return False


async def _keep_alive(lock: Any, every: float) -> None:
    """Renew a held Redis lock's TTL every `every` s until cancelled (or the lock is lost)."""
    with contextlib.suppress(LockError, RedisError):
        while True:
            await asyncio.sleep(every)  # wall time: Redis' own TTL runs on it
            await lock.reacquire()
