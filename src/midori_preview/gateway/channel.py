"""`/__midori/events` on a preview host: the sandbox's events (`status`, `log`, and whatever the
service adds later, e.g. `updated`) as Server-Sent Events, same-origin for the gateway's pages,
authorized by the host label like everything else on that host. It reads events and the row,
nothing more: it is no viewer (no heartbeat, no charge) and keeps nothing alive. Any replica
serves it (events are Redis streams)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse
from starlette.types import Scope

from midori_preview.events import BLOCK_MS
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import TERMINAL
from midori_preview.previews.views import HostView

EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")


def _status(view: HostView) -> dict[str, str]:
    data = {"status": str(view.status), "reason": view.reason or ""}
    return {"event": "status", "data": json.dumps(data, ensure_ascii=False)}


def since_version(scope: Scope) -> int | None:
    """`?version=N` of the reload script: the version its page was served at."""
    values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("version")
    if not values or not values[0].isdigit() or len(values[0]) > 9:
        return None
    return int(values[0])


async def events_response(
    previews: PreviewService,
    view: HostView,
    last_event_id: str | None,
    *,
    since_version: int | None = None,
) -> EventSourceResponse:
    """The events after `last_event_id` (all of them without it), then new ones as they come;
    the stream ends after a terminal status. When a wait times out the row is read again, so a
    status whose event was lost still reaches the page.

    With `since_version` (the reload script, no `Last-Event-ID`): only new events, after an
    `updated` one at once when the preview is already past that version (the stream's newest
    id is read before the row, so no update falls between the two)."""
    after = last_event_id if last_event_id and EVENT_ID.match(last_event_id) else "0-0"
    first: list[dict[str, str]] = []
    if since_version is not None and after == "0-0":
        try:
            after = await previews.events.last_id(view.sandbox_id)
        except RedisError:
            after = "0-0"
        fresh = await previews.host_view(view.sandbox_id)
        view = fresh or view
        if view.version > since_version:
            data = json.dumps({"version": view.version})
            first.append({"event": "updated", "data": data})
    settled = view.status in TERMINAL

    async def stream() -> AsyncIterator[dict[str, str]]:
        for item in first:
            yield item
        last = None
        block = None if settled else BLOCK_MS  # already over: replay what is left, then close
        async for event in previews.follow_events(view.sandbox_id, after=after, block_ms=block):
            if event is None:
                now = view if settled else await previews.host_view(view.sandbox_id)
                if now is None:
                    return
                if now.status != last:
                    last = now.status
                    yield _status(now)
                if now.status in TERMINAL:
                    return
                continue
            if event.kind == "status":
                last = event.data.get("status")
            yield {
                "id": event.id,
                "event": event.kind,
                "data": json.dumps(event.data, ensure_ascii=False),
            }

    return EventSourceResponse(stream(), ping=15, headers={"cache-control": "no-store"})
