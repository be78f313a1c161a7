"""Serving the app for real in tests: free ports, a uvicorn server in the test's event loop, and
the Redis keys a test app leaves behind."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import uvicorn

from midori_preview.settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def uvicorn_serving(app: Any, port: int) -> AsyncIterator[None]:
    """`app` behind a real uvicorn server on 127.0.0.1:`port` (lifespan included) until exit:
    responses stream as they are written, unlike over httpx's ASGITransport."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    try:
        # The lifespan (migrations, the provider's start-up) takes seconds on a loaded machine.
        async with asyncio.timeout(60):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.02)
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def drop_redis_keys(settings: Settings) -> None:
    """Remove the keys of this test's deployment from the shared Redis."""
    if not settings.redis_url:
        return
    r = aioredis.Redis.from_url(settings.redis_url)
    keys = [k async for k in r.scan_iter(match=f"mp:{settings.preview_deployment}:*")]
    if keys:
        await r.delete(*keys)
    await r.aclose()
