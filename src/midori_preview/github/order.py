"""Which event of a pull request (or branch) is the newest one seen, across replicas: a burst of
events (a rebase, force pushes) builds only the newest head — an older event still waiting for
the target's lock is superseded and does nothing. Kept in Redis (`ZADD GT`: only ever grows);
when Redis is unreachable nothing is superseded (the lock and the stale-event check still keep
the newest commit winning)."""

from __future__ import annotations

from redis.exceptions import RedisError

from midori_preview.events import EventBus
from midori_preview.github.payloads import Target

TTL_SECONDS = 86400


class EventOrder:
    def __init__(self, events: EventBus) -> None:
        self.events = events

    def _key(self, target: Target) -> str:
        return f"{self.events.prefix}:github:latest:{target.repo.lower()}:{target.key}"

    async def seen(self, target: Target, order: float) -> None:
        """Record an event of `target` (its order: the PR's `updated_at`, else arrival)."""
        key = self._key(target)
        try:
            await self.events.redis.zadd(key, {"v": order}, gt=True)
            await self.events.redis.expire(key, TTL_SECONDS)
        except RedisError:
            pass

    async def superseded(self, target: Target, order: float) -> bool:
        """Whether a newer event of `target` than `order` was seen."""
        try:
            latest = await self.events.redis.zscore(self._key(target), "v")
        except RedisError:
            return False
        return latest is not None and float(latest) > order
