"""Preview routes: parse, authorize, call PreviewService, shape the answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from sse_starlette.sse import EventSourceResponse

from midori_preview.deps import PreviewsDep, User
from midori_preview.errors import (
    Responses,
    error_body,
    error_choices,
    error_response,
    invalid_request,
    validation_error_body,
)
from midori_preview.events import BLOCK_MS
from midori_preview.previews.links import LINKED, sandbox_links
from midori_preview.previews.schemas import (
    EXAMPLE_SANDBOX_ID,
    Created,
    CreatePreview,
    HeartbeatIn,
    HeartbeatOut,
    PreviewStatus,
    SourceUpdated,
    StopIn,
    UpdateSource,
    Usage,
)
from midori_preview.previews.states import TERMINAL, SandboxStatus

S = SandboxStatus
router = APIRouter(prefix="/api/preview", tags=["previews"])
SandboxIdQ = Annotated[str, Query(alias="sandboxId", min_length=1, max_length=64)]
# The `id` of an event of ours: a stream id, `<ms>-<seq>` (or `<ms>`), each within the 64-bit
# integers the event store accepts. Anything else is refused before the stream starts.
EVENT_ID = r"^(?:[0-9]{1,19}(?:-[0-9]{1,19})?)?$"

UNAUTHORIZED = error_response(
    401, "unauthorized", "Missing bearer token.", "Not authenticated (`unauthorized`)."
)
NOT_FOUND = error_response(
    404,
    "sandbox_not_found",
    "No such sandbox.",
    "Unknown sandbox, or someone else's (`sandbox_not_found`).",
    sandboxId=EXAMPLE_SANDBOX_ID,
)
INVALID_QUERY = invalid_request(
    "Invalid request (`validation_error`).", (("query", "sandboxId"), "Field required")
)
INVALID_BODY = invalid_request(
    "Invalid payload (`validation_error`).", (("body", "sandboxId"), "Field required")
)
BY_ID: Responses = {**UNAUTHORIZED, **NOT_FOUND, **INVALID_QUERY}
# One event of the stream (the schema of an event stream describes each event); the example
# below is a whole stream.
SSE_EVENT = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "Send it back as `Last-Event-ID` to resume."},
        "event": {"type": "string", "enum": ["status", "log", "updated", "update_failed"]},
        "data": {
            "type": "string",
            "description": "JSON: `{status, reason}` for `status` (`error` adds `step`, "
            "`code`, `message`, `exitCode`), `{step, stream, line}` for `log`, "
            "`{version, updatedAt, files, deleted, rebuilt}` for `updated` (a live update went "
            "live), `{step, code, exitCode}` for `update_failed`.",
        },
    },
    "required": ["id", "event", "data"],
}
SSE_EXAMPLE = "".join(
    f"id: {id_}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
    for id_, kind, data in (
        ("1749720600351-0", "status", {"status": S.REQUESTED}),
        ("1749720600357-0", "status", {"status": S.CREATING}),
        ("1749720600362-0", "status", {"status": S.UPLOADING}),
        ("1749720600366-0", "status", {"status": S.STARTING}),
        (
            "1749720604439-0",
            "log",
            {
                "step": "start",
                "stream": "stderr",
                "line": '127.0.0.1 - - [12/Jun/2025 09:30:04] "GET / HTTP/1.1" 200 -',
            },
        ),
        ("1749720604446-0", "status", {"status": S.RUNNING}),
        ("1749721500462-0", "status", {"status": S.STOPPING, "reason": "user"}),
        ("1749721500472-0", "status", {"status": S.STOPPED, "reason": "user"}),
    )
)


@router.post(
    "/daytona",
    status_code=202,
    response_model=Created,
    responses={
        202: {"links": sandbox_links()},
        200: {
            "model": Created,
            "description": "A live preview of the same project and source already exists.",
            "links": sandbox_links(),
        },
        **UNAUTHORIZED,
        **error_response(
            409,
            "concurrency_limit",
            "You already have 1 preview(s) running (limit 1). Stop one, or send "
            '"replace": true to stop the oldest and start this one.',
            "`concurrency_limit`: another preview is running.",
            activeSandboxIds=[EXAMPLE_SANDBOX_ID],
            limit=1,
        ),
        **error_response(
            413,
            "payload_too_large",
            "at most 200 files per preview",
            "Too many files, or too many bytes (`payload_too_large`).",
        ),
        **error_choices(
            422,
            "Invalid payload (`validation_error`), or `Idempotency-Key` reused with another "
            "body (`idempotency_key_reused`).",
            validation_error_body(
                [
                    {
                        "loc": ["body"],
                        "message": "Value error, give exactly one source: promptJson, files or git",
                    }
                ]
            ),
            error_body(
                "idempotency_key_reused",
                "Idempotency-Key was already used with a different body.",
            ),
        ),
        **error_choices(
            429,
            "`rate_limited` (see `Retry-After`) or `daily_quota_exhausted`.",
            error_body(
                "rate_limited",
                "Too many previews started; try again in 42 s.",
                retryAfterSeconds=42,
            ),
            error_body(
                "daily_quota_exhausted",
                "Today's preview time is used up; it resets at midnight.",
                resetAt="2025-06-13T00:00:00+00:00",
            ),
        ),
        **error_response(
            503,
            "quota_unavailable",
            "Quota store unreachable; previews cannot start now.",
            "`quota_unavailable`: the quota store is unreachable.",
        ),
    },
)
async def create_preview(
    body: CreatePreview,
    user: User,
    svc: PreviewsDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> Created:
    """Start a preview. Answers 202 at once; the build continues in the background — follow
    `statusUrl` or `eventsUrl`. Same `Idempotency-Key` + same body → the same answer."""
    status, created = await svc.create(user.user_id, body, idempotency_key=idempotency_key)
    response.status_code = status
    response.headers["Location"] = created.status_url
    return created


@router.get("/daytona/status", response_model=PreviewStatus, responses={**LINKED, **BY_ID})
async def preview_status(sandbox_id: SandboxIdQ, user: User, svc: PreviewsDep) -> PreviewStatus:
    """The sandbox's state, preview URL and token (when running), error and log tail."""
    return await svc.status(sandbox_id, user.user_id)


@router.get(
    "/daytona/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `status` and `log` events, each with an `id`.",
            "content": {"text/event-stream": {"schema": SSE_EVENT, "example": SSE_EXAMPLE}},
        },
        **BY_ID,
        **error_choices(
            422,
            "Invalid request (`validation_error`): no `sandboxId`, or a `Last-Event-ID` that is "
            "not one of this stream's ids.",
            validation_error_body([{"loc": ["query", "sandboxId"], "message": "Field required"}]),
            validation_error_body(
                [
                    {
                        "loc": ["header", "last-event-id"],
                        "message": f"String should match pattern '{EVENT_ID}'",
                    }
                ]
            ),
        ),
    },
)
async def preview_events(
    sandbox_id: SandboxIdQ,
    user: User,
    svc: PreviewsDep,
    last_event_id: Annotated[str | None, Header(pattern=EVENT_ID)] = None,
) -> EventSourceResponse:
    """Server-Sent Events: `status` on every transition, `log` for each output line; the stream
    ends after a terminal state. Resume with `Last-Event-ID`."""
    first = await svc.state(sandbox_id, user.user_id)  # 404 unless it is the caller's

    async def stream() -> AsyncIterator[dict[str, str]]:
        cursor = last_event_id or "0-0"
        # Already over: replay what is left without waiting, then close.
        block = None if first.status in TERMINAL else BLOCK_MS
        async for event in svc.follow_events(sandbox_id, after=cursor, block_ms=block):
            if event is None:  # nothing new: the stream may have been lost or pruned
                current = first if block is None else await svc.state(sandbox_id, user.user_id)
                if current.status in TERMINAL:
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


@router.post(
    "/daytona/stop",
    response_model=PreviewStatus,
    responses={**LINKED, **UNAUTHORIZED, **NOT_FOUND, **INVALID_BODY},
)
async def stop_preview(body: StopIn, user: User, svc: PreviewsDep) -> PreviewStatus:
    """Stop a preview (idempotent). Its processes and files are gone when this answers."""
    return await svc.stop(body.sandbox_id, reason="user", user_id=user.user_id)


@router.post(
    "/daytona/heartbeat",
    response_model=HeartbeatOut,
    responses={
        **LINKED,
        **UNAUTHORIZED,
        **NOT_FOUND,
        **error_choices(
            410,
            "`sandbox_stopped` (with `reason`) or `daily_quota_exhausted`.",
            error_body(
                "sandbox_stopped",
                "This preview is no longer running.",
                sandboxId=EXAMPLE_SANDBOX_ID,
                reason="idle",
            ),
            error_body(
                "daily_quota_exhausted",
                "Today's preview time is used up; the preview was stopped.",
                sandboxId=EXAMPLE_SANDBOX_ID,
                reason="quota",
                resetAt="2025-06-13T00:00:00+00:00",
            ),
        ),
        **INVALID_BODY,
    },
)
async def heartbeat(body: HeartbeatIn, user: User, svc: PreviewsDep) -> HeartbeatOut:
    """Tell the service someone is watching (every `heartbeatIntervalSeconds`)."""
    return await svc.heartbeat(body.sandbox_id, user.user_id, body.visible)


@router.get("/usage", response_model=Usage, responses=UNAUTHORIZED)
async def my_usage(user: User, svc: PreviewsDep) -> Usage:
    """The caller's preview time today."""
    return await svc.usage(user.user_id)


@router.put(
    "/daytona/{sandbox_id}/source",
    response_model=SourceUpdated,
    responses={
        **LINKED,
        **UNAUTHORIZED,
        **NOT_FOUND,
        **error_choices(
            409,
            "`source_incompatible`: another template, port or start command (a new preview is "
            "needed; `differences` names what differs).",
            error_body(
                "source_incompatible",
                "This preview cannot take that source (template differ); start a new preview.",
                differences={"template": {"preview": "static", "update": "vite"}},
            ),
        ),
        **error_response(
            410,
            "sandbox_stopped",
            "This preview is no longer running; start a new one.",
            "`sandbox_stopped`: the preview stopped (or stops).",
            sandboxId=EXAMPLE_SANDBOX_ID,
            reason="idle",
        ),
        **error_response(
            413,
            "payload_too_large",
            "at most 2000 files per update",
            "Too many files, or too many bytes (`payload_too_large`).",
        ),
        **error_choices(
            422,
            "Invalid payload (`validation_error`), or the install/build of the new files failed "
            "(`rebuild_failed`; the previous version is still live).",
            validation_error_body(
                [{"loc": ["body"], "message": "Value error, give exactly one source"}]
            ),
            error_body(
                "rebuild_failed",
                "the build failed; the previous version is still live",
                step="build",
                stepCode="step_failed",
                exitCode=1,
                logsTail=["error during build"],
            ),
        ),
        **error_response(
            429,
            "rate_limited",
            "Too many updates; try again in 12 s.",
            "`rate_limited`: too many updates (see `Retry-After`).",
            retryAfterSeconds=12,
        ),
    },
)
async def update_source(
    sandbox_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: UpdateSource,
    user: User,
    svc: PreviewsDep,
) -> SourceUpdated:
    """Update a running preview in place: the same sandbox and links, a new `version`, an
    `updated` event, and open pages reload themselves. An identical source is a no-op; a preview
    still building takes the update once it runs; concurrent updates: the newest wins."""
    return await svc.update_source(sandbox_id, user.user_id, body)


@router.get(
    "/daytona/{sandbox_id}",
    response_model=PreviewStatus,
    responses={
        **LINKED,
        **UNAUTHORIZED,
        **NOT_FOUND,
        **invalid_request(
            "Invalid request (`validation_error`).", (("path", "sandbox_id"), "Field required")
        ),
    },
)
async def preview_by_id(sandbox_id: str, user: User, svc: PreviewsDep) -> PreviewStatus:
    """Same as `GET /daytona/status?sandboxId=`."""
    return await svc.status(sandbox_id, user.user_id)
