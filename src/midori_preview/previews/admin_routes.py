"""Admin routes (role `admin`): cleanup stats/actions, usage reports, the sandbox table."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict

from midori_preview.deps import AdminDep, AdminUser
from midori_preview.errors import (
    Responses,
    error_body,
    error_choices,
    error_response,
    invalid_request,
    validation_error_body,
)
from midori_preview.previews.links import with_links
from midori_preview.previews.schemas import EXAMPLE_SANDBOX_ID
from midori_preview.previews.states import SandboxStatus

S = SandboxStatus
router = APIRouter(prefix="/api/preview", tags=["admin"])
ADMIN_ONLY: Responses = {
    **error_response(
        401, "unauthorized", "Missing bearer token.", "Not authenticated (`unauthorized`)."
    ),
    **error_response(403, "forbidden", "Admins only.", "`forbidden`: admins only."),
}


def ok(description: str, **examples: dict[str, Any]) -> Responses:
    """The documented 200 of a route answering a plain dict, with named examples."""
    named = {name: {"summary": name, "value": value} for name, value in examples.items()}
    return {200: {"description": description, "content": {"application/json": {"examples": named}}}}


STATS_EXAMPLE = {
    "success": True,
    "stats": {
        "total": 14,
        S.RUNNING: 3,
        S.STOPPED: 9,
        S.STOPPING: 0,
        S.CREATING: 1,
        S.ERROR: 1,
        "isServiceRunning": True,
        "paused": False,
        "lastRunAt": "2025-06-12T09:41:00+00:00",
        "nextRunAt": "2025-06-12T09:42:00+00:00",
        "lastRun": {"idle": 1, "keptAlive": 2, "retired": 0, "idempotencyKeysPruned": 3,
                    "durationMs": 25.2},
        "lastSyncAt": "2025-06-12T09:35:00+00:00",
        "lastSync": {"slotsRebuilt": 3},
    },
}  # fmt: skip
SANDBOXES_EXAMPLE = {
    "sandboxes": [
        {
            "sandboxId": EXAMPLE_SANDBOX_ID,
            "userId": "alice",
            "projectId": "demo-cafe",
            "kind": "user",
            "status": S.RUNNING,
            "reason": None,
            "createdAt": "2025-06-12T09:30:00+00:00",
            "readyAt": "2025-06-12T09:30:04+00:00",
            "lastHeartbeatAt": "2025-06-12T09:42:04+00:00",
            "visible": True,
        },
        {
            "sandboxId": "m7rt2wq4zy5nbc3h",
            "userId": "github",
            "projectId": "gh:octo-org:site:pr:7",
            "kind": "github",
            "status": S.STOPPED,
            "reason": "pr_closed",
            "createdAt": "2025-06-12T08:02:11+00:00",
            "readyAt": "2025-06-12T08:02:40+00:00",
            "lastHeartbeatAt": "2025-06-12T08:02:40+00:00",
            "visible": True,
        },
    ]
}
REPORT_EXAMPLE = {
    "from": "2025-06-11",
    "to": "2025-06-12",
    "groupBy": "user",
    "rows": [
        {"day": "2025-06-11", "key": "alice", "previewSeconds": 1820, "sandboxesCreated": 4,
         "stoppedByReason": {"idle": 3, "user": 1}, "commandsRun": 9},
        {"day": "2025-06-12", "key": "alice", "previewSeconds": 754, "sandboxesCreated": 1,
         "stoppedByReason": {}, "commandsRun": 3},
        {"day": "2025-06-12", "key": "bob", "previewSeconds": 3600, "sandboxesCreated": 2,
         "stoppedByReason": {"quota": 1, "replaced": 1}, "commandsRun": 6},
    ],
    "totals": {"previewSeconds": 6174, "sandboxesCreated": 7, "commandsRun": 18},
}  # fmt: skip


class CleanupIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"action": "cleanup"}]}
    )
    action: Literal["start", "stop", "cleanup", "sync", "memory"]


@router.get(
    "/cleanup",
    responses={**ok("Sandbox counts and the reaper's state.", stats=STATS_EXAMPLE), **ADMIN_ONLY},
)
async def cleanup_stats(_: AdminUser, svc: AdminDep) -> dict[str, Any]:
    """Sandbox counts and the reaper's state (last/next run, last pass counts)."""
    return {"success": True, "stats": await svc.stats()}


@router.post(
    "/cleanup",
    responses={
        **ok(
            "What the action did (`result` depends on `action`).",
            cleanup={
                "success": True,
                "action": "cleanup",
                "result": {
                    "idle": 1,
                    "expired": 1,
                    "retired": 2,
                    "idempotencyKeysPruned": 0,
                    "durationMs": 25.2,
                },
            },
            sync={"success": True, "action": "sync", "result": {"slotsRebuilt": 3}},
            memory={
                "success": True,
                "action": "memory",
                "result": {"idempotencyKeys": 12, "eventStreams": 5},
            },
            stop={"success": True, "action": "stop", "result": {"paused": True}},
            start={"success": True, "action": "start", "result": {"paused": False}},
        ),
        **ADMIN_ONLY,
        **invalid_request(
            "Unknown action (`validation_error`).",
            (("body", "action"), "Input should be 'start', 'stop', 'cleanup', 'sync' or 'memory'"),
        ),
    },
)
async def cleanup_action(body: CleanupIn, _: AdminUser, svc: AdminDep) -> dict[str, Any]:
    """`start`/`stop` resume/pause the reaper on every replica; `cleanup` runs a pass now;
    `sync` reconciles with the provider and rebuilds Redis; `memory` prunes ephemeral state."""
    result = await svc.act(body.action)
    return {"success": True, "action": body.action, "result": result}


@router.get(
    "/admin/sandboxes",
    responses={
        200: with_links(
            ok("The sandboxes in the active view, newest first.", sandboxes=SANDBOXES_EXAMPLE)[200],
            "/sandboxes/0/sandboxId",  # the newest
        ),
        **ADMIN_ONLY,
    },
)
async def admin_sandboxes(_: AdminUser, svc: AdminDep) -> dict[str, Any]:
    """Every sandbox in the active view (newest first)."""
    return {"sandboxes": await svc.sandboxes()}


@router.get(
    "/usage/report",
    responses={
        **ok("One row per day and user (or project), and the totals.", report=REPORT_EXAMPLE),
        **ADMIN_ONLY,
        **error_choices(
            422,
            "Missing or bad dates (`validation_error`).",
            validation_error_body([{"loc": ["query", "from"], "message": "Field required"}]),
            error_body("validation_error", "`from` must be before `to`, at most a year apart"),
        ),
    },
)
async def usage_report(
    _: AdminUser,
    svc: AdminDep,
    day_from: Annotated[date, Query(alias="from")],
    day_to: Annotated[date, Query(alias="to")],
    group_by: Annotated[Literal["user", "project"], Query(alias="groupBy")] = "user",
) -> dict[str, Any]:
    """Preview seconds, sandboxes created, stops by reason and commands run, per day."""
    return await svc.usage_report(day_from, day_to, group_by)
