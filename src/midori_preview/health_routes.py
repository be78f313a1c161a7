"""Health routes: `/healthz` (the process is up) and `/readyz` (its database and Redis answer;
with local sandboxes, also what isolates them on this host)."""

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
                "application/json": {
                    "example": {
                        "status": "ok",
                        "database": True,
                        "redis": True,
                        "sandboxIsolation": {
                            "bubblewrap": True,
                            "network": True,
                            "problem": None,
                            "unisolatedCommands": "run",
                        },
                    }
                }
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
    """The database and Redis are reachable. With local sandboxes, `sandboxIsolation` says what
    isolates them here: bubblewrap, a network of their own (`problem`: why not), and what
    happens to user-supplied commands without one (`unisolatedCommands`: run or refuse)."""
    db_ok = await services.db.health.ping()
    redis_ok = await services.quota.ping()
    ok = db_ok and redis_ok
    body: dict[str, object] = {
        "status": "ok" if ok else "unavailable",
        "database": db_ok,
        "redis": redis_ok,
    }
    if services.isolation is not None:
        body["sandboxIsolation"] = services.isolation
    return JSONResponse(body, status_code=200 if ok else 503)
