"""The Redis client: a real server when REDIS_URL is set, else an in-process Redis-compatible store
(fakeredis with Lua through lupa), so the same scripts run in both."""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis


def make_redis(url: str | None) -> Any:
    if url:
        return redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
    import fakeredis

    return fakeredis.FakeAsyncRedis(decode_responses=True)
