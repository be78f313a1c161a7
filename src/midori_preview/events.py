"""Sandbox events (status transitions and log lines) on Redis streams, so that any replica can
serve any sandbox's event stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from midori_preview.logging import get_logger
from midori_preview.previews.states import TERMINAL

log = get_logger(__name__)

# A blocking read waits less than the Redis client's socket timeout (kv.py: 5 s).
BLOCK_MS = 4000

# KEYS: the streams. ARGV: 1 maxlen (approximate), 2 ttl seconds, 3 kind, 4.. each one's data.
# What `publish` does for each key, as one command.
PUBLISH_MANY = """
for i, key in ipairs(KEYS) do
  redis.call('XADD', key, 'MAXLEN', '~', ARGV[1], '*', 'kind', ARGV[3], 'data', ARGV[3 + i])
  redis.call('EXPIRE', key, tonumber(ARGV[2]))
end
return #KEYS
"""


@dataclass(frozen=True, slots=True)
class Event:
    id: str
    kind: str  # "status" | "log"
    data: dict[str, Any]


class EventBus:
    def __init__(
        self, redis: Any, *, prefix: str, maxlen: int = 2000, ttl_seconds: int = 86400
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.maxlen = maxlen
        self.ttl = ttl_seconds
        self._publish_many = redis.register_script(PUBLISH_MANY)

    def key(self, sandbox_id: str) -> str:
        return f"{self.prefix}:events:{sandbox_id}"

    async def publish(self, sandbox_id: str, kind: str, data: dict[str, Any]) -> None:
        """Best effort: a lost event never breaks a build (status lives in the database)."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(
                    self.key(sandbox_id),
                    {"kind": kind, "data": json.dumps(data, ensure_ascii=False)},
                    maxlen=self.maxlen,
                    approximate=True,
                )
                pipe.expire(self.key(sandbox_id), self.ttl)
                await pipe.execute()
        except RedisError as exc:
            log.warning("events.publish_failed", sandbox_id=sandbox_id, error=type(exc).__name__)

    async def publish_many(self, kind: str, events: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """`publish` of one kind for many (sandbox id, data), in one script call: the reaper's
        batches (one command, not two per event)."""
        if not events:
            return
        try:
            await self._publish_many(
                keys=[self.key(sandbox_id) for sandbox_id, _ in events],
                args=[
                    self.maxlen, self.ttl, kind,
                    *(json.dumps(data, ensure_ascii=False) for _, data in events),
                ],
            )  # fmt: skip
        except RedisError as exc:
            log.warning("events.publish_failed", events=len(events), error=type(exc).__name__)

    async def last_id(self, sandbox_id: str) -> str:
        """The id of the stream's newest event ("0-0" for none): follow after it for new ones."""
        last = await self.redis.xrevrange(self.key(sandbox_id), count=1)
        return str(last[0][0]) if last else "0-0"

    async def read(
        self, sandbox_id: str, *, after: str = "0-0", block_ms: int | None = BLOCK_MS
    ) -> list[Event]:
        try:
            res = await self.redis.xread({self.key(sandbox_id): after}, count=200, block=block_ms)
        except RedisTimeoutError:
            return []
        events: list[Event] = []
        for _key, entries in res or []:
            for entry_id, fields in entries:
                events.append(Event(entry_id, fields["kind"], json.loads(fields["data"])))
        return events

    async def follow(
        self, sandbox_id: str, *, after: str = "0-0", block_ms: int | None = BLOCK_MS
    ) -> AsyncIterator[Event | None]:
        """Every event after `after`, then new ones as they come; `None` when a wait timed out
        (so callers can re-check the database); ends after a terminal status event."""
        cursor = after
        while True:
            events = await self.read(sandbox_id, after=cursor, block_ms=block_ms)
            if not events:
                yield None
                continue
            for event in events:
                cursor = event.id
                yield event
                if event.kind == "status" and event.data.get("status") in TERMINAL:
                    return

    async def delete_older_than(self, min_id_ms: int) -> int:
        """Prune streams whose newest entry is older than `min_id_ms` (the memory action)."""
        removed = 0
        async for key in self.redis.scan_iter(match=f"{self.prefix}:events:*"):
            last = await self.redis.xrevrange(key, count=1)
            if not last or int(str(last[0][0]).split("-")[0]) < min_id_ms:
                removed += int(await self.redis.delete(key))
        return removed
