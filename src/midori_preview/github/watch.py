"""The previews GitHub work starts, seen from the lifecycle: whether one is live, when it settles
(followed through its event stream, checked in the database whenever the stream is quiet), and
stopping it."""

from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from midori_preview.errors import PreviewError, SandboxNotFound
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.previews.schemas import PreviewStatus
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import LIVE, SETTLED
from midori_preview.settings import Settings

log = get_logger(__name__)


class SandboxWatch:
    def __init__(self, *, settings: Settings, previews: PreviewService, events: EventBus) -> None:
        self.settings = settings
        self.previews = previews
        self.events = events

    async def live(self, sandbox_id: str | None) -> bool:
        if sandbox_id is None:
            return False
        try:
            status = await self.previews.status(sandbox_id, None)
        except SandboxNotFound:
            return False
        return status.status in LIVE

    async def settled(self, sandbox_id: str) -> PreviewStatus | None:
        """The sandbox's status once it is running, failed or stopped (else None)."""
        try:
            status = await self.previews.status(sandbox_id, None)
        except SandboxNotFound:
            return None
        return status if status.status in SETTLED else None

    async def stop(self, sandbox_id: str, reason: str) -> None:
        try:
            await self.previews.stop(sandbox_id, reason=reason)
        except SandboxNotFound:
            pass
        except PreviewError as exc:
            log.warning("github.stop_failed", sandbox_id=sandbox_id, code=exc.code)

    async def wait_settled(self, sandbox_id: str) -> PreviewStatus | None:
        """The sandbox once it is running, failed or stopped — from its event stream, with a
        database check whenever the stream is quiet (events are best effort)."""
        s = self.settings
        budget = (
            s.sandbox_create_timeout_seconds
            + s.git_clone_timeout_seconds
            + 3 * s.build_step_timeout_seconds
            + s.start_timeout_seconds
            + 60
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        while loop.time() < deadline:
            try:
                async for event in self.events.follow(sandbox_id, block_ms=2000):
                    if event is None or event.kind == "status":
                        settled = await self.settled(sandbox_id)
                        if settled is not None:
                            return settled
                    if loop.time() >= deadline:
                        break
            except RedisError:
                await asyncio.sleep(2)
            settled = await self.settled(sandbox_id)
            if settled is not None:
                return settled
        log.warning("github.follow_gave_up", sandbox_id=sandbox_id)
        return None
