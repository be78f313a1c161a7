"""Health routes: `/healthz` (the process is up) and `/readyz` (its database and Redis answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from midori_preview.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={
        200: {
            "description": "Ready.",
            "content": {
                "application/json": {"example": {"status": "ok", "database": True, "redis": True}}
            },
        },
        503: {
            "description": "Not ready: which dependency is down.",
            "content": {
                "application/json": {
                    "example": {"status": "unavailable", "database": True, "redis": False}
                }
            },
        },
    },
)
async def readyz(services: ServicesDep) -> JSONResponse:
    """The database and Redis are reachable."""
    db_ok = await services.db.health.ping()
    redis_ok = await services.quota.ping()
    ok = db_ok and redis_ok
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "database": db_ok, "redis": redis_ok},
        status_code=200 if ok else 503,
    )
