"""Preview routes: parse, authorize, call PreviewService, shape the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from sse_starlette.sse import EventSourceResponse

from midori_preview.auth import Principal, current_user
from midori_preview.events import BLOCK_MS, TERMINAL_STATUSES
from midori_preview.previews.schemas import (
    Created,
    CreatePreview,
    HeartbeatIn,
    HeartbeatOut,
    PreviewStatus,
    StopIn,
    Usage,
)
from midori_preview.previews.service import PreviewService

router = APIRouter(prefix="/api/preview", tags=["previews"])
User = Annotated[Principal, Depends(current_user)]
SandboxIdQ = Annotated[str, Query(alias="sandboxId", min_length=1, max_length=64)]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "Not authenticated (`unauthorized`)."},
    404: {"description": "Unknown sandbox, or someone else's (`sandbox_not_found`)."},
    422: {"description": "Invalid payload (`validation_error`)."},
}


def service(request: Request) -> PreviewService:
    svc: PreviewService = request.app.state.previews
    return svc


Svc = Annotated[PreviewService, Depends(service)]


@router.post(
    "/daytona",
    status_code=202,
    response_model=Created,
    responses={
        **ERRORS,
        200: {"description": "A live preview of the same project and source already exists."},
        409: {"description": "`concurrency_limit`: another preview is running."},
        429: {"description": "`rate_limited` or `daily_quota_exhausted`."},
        503: {"description": "`quota_unavailable`: the quota store is unreachable."},
    },
)
async def create_preview(
    body: CreatePreview,
    user: User,
    svc: Svc,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Created:
    """Start a preview. Answers 202 at once; the build continues in the background — follow
    `statusUrl` or `eventsUrl`. Same `Idempotency-Key` + same body → the same answer."""
    status, created = await svc.create(user.user_id, body, idempotency_key=idempotency_key)
    response.status_code = status
    response.headers["Location"] = created.status_url
    return created


@router.get("/daytona/status", response_model=PreviewStatus, responses=ERRORS)
async def preview_status(sandbox_id: SandboxIdQ, user: User, svc: Svc) -> PreviewStatus:
    """The sandbox's state, preview URL and token (when running), error and log tail."""
    return await svc.status(sandbox_id, user.user_id)


@router.get("/daytona/events", responses=ERRORS)
async def preview_events(
    sandbox_id: SandboxIdQ,
    user: User,
    svc: Svc,
    last_event_id: Annotated[str | None, Header()] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `status` on every transition, `log` for each output line; the stream
    ends after a terminal state. Resume with `Last-Event-ID`."""
    first = await svc.status(sandbox_id, user.user_id)  # 404 unless it is the caller's

    async def stream() -> AsyncIterator[dict[str, str]]:
        cursor = last_event_id or "0-0"
        # Already over: replay what is left without waiting, then close.
        block = None if first.status in TERMINAL_STATUSES else BLOCK_MS
        async for event in svc.events.follow(sandbox_id, after=cursor, block_ms=block):
            if event is None:  # nothing new: the stream may have been lost or pruned
                current = first if block is None else await svc.status(sandbox_id, user.user_id)
                if current.status in TERMINAL_STATUSES:
                    data = {"status": current.status, "reason": current.reason}
                    yield {"id": cursor, "event": "status", "data": json.dumps(data)}
                    return
                continue
            cursor = event.id
            yield {
                "id": event.id,
                "event": event.kind,
                "data": json.dumps(event.data, ensure_ascii=False),
            }

    return EventSourceResponse(stream(), ping=15)


@router.post("/daytona/stop", response_model=PreviewStatus, responses=ERRORS)
async def stop_preview(body: StopIn, user: User, svc: Svc) -> PreviewStatus:
    """Stop a preview (idempotent). Its processes and files are gone when this answers."""
    return await svc.stop(body.sandbox_id, reason="user", user_id=user.user_id)


@router.post(
    "/daytona/heartbeat",
    response_model=HeartbeatOut,
    responses={
        **ERRORS,
        410: {"description": "`sandbox_stopped` (with `reason`) or `daily_quota_exhausted`."},
    },
)
async def heartbeat(body: HeartbeatIn, user: User, svc: Svc) -> HeartbeatOut:
    """Tell the service someone is watching (every `heartbeatIntervalSeconds`)."""
    return await svc.heartbeat(body.sandbox_id, user.user_id, body.visible)


@router.get("/usage", response_model=Usage)
async def my_usage(user: User, svc: Svc) -> Usage:
    """The caller's preview time today."""
    return await svc.usage(user.user_id)


@router.get("/daytona/{sandbox_id}", response_model=PreviewStatus, responses=ERRORS)
async def preview_by_id(sandbox_id: str, user: User, svc: Svc) -> PreviewStatus:
    """Same as `GET /daytona/status?sandboxId=`."""
    return await svc.status(sandbox_id, user.user_id)
