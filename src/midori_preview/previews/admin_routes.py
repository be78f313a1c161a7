"""Admin routes (role `admin`): cleanup stats/actions, usage reports, the sandbox table."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict

from midori_preview.auth import Principal, current_admin
from midori_preview.previews.admin import AdminService

router = APIRouter(prefix="/api/preview", tags=["admin"])
Admin = Annotated[Principal, Depends(current_admin)]
FORBIDDEN: dict[int | str, dict[str, Any]] = {403: {"description": "`forbidden`: admins only."}}


def admin_service(request: Request) -> AdminService:
    svc: AdminService = request.app.state.admin
    return svc


Svc = Annotated[AdminService, Depends(admin_service)]


class CleanupIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"action": "cleanup"}]}
    )
    action: Literal["start", "stop", "cleanup", "sync", "memory"]


@router.get("/cleanup", responses=FORBIDDEN)
async def cleanup_stats(_: Admin, svc: Svc) -> dict[str, Any]:
    """Sandbox counts and the reaper's state (last/next run, last pass counts)."""
    return {"success": True, "stats": await svc.stats()}


@router.post("/cleanup", responses=FORBIDDEN)
async def cleanup_action(body: CleanupIn, _: Admin, svc: Svc) -> dict[str, Any]:
    """`start`/`stop` resume/pause the reaper on every replica; `cleanup` runs a pass now;
    `sync` reconciles with the provider and rebuilds Redis; `memory` prunes ephemeral state."""
    result = await svc.act(body.action)
    return {"success": True, "action": body.action, "result": result}


@router.get("/admin/sandboxes", responses=FORBIDDEN)
async def admin_sandboxes(_: Admin, svc: Svc) -> dict[str, Any]:
    """Every sandbox in the active view (newest first)."""
    return {"sandboxes": await svc.sandboxes()}


@router.get("/usage/report", responses=FORBIDDEN)
async def usage_report(
    request: Request,
    _: Admin,
    svc: Svc,
    day_from: Annotated[date, Query(alias="from")],
    day_to: Annotated[date, Query(alias="to")],
    group_by: Annotated[Literal["user", "project"], Query(alias="groupBy")] = "user",
) -> dict[str, Any]:
    """Preview seconds, sandboxes created, stops by reason and commands run, per day."""
    tz = request.app.state.previews.tz
    return await svc.usage_report(day_from, day_to, group_by, tz)
