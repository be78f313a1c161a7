"""`GET /metrics` (Prometheus text, every worker's figures in multi-process mode) and the admin's
headline figures from the same samples (`GET /api/preview/admin/metrics`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from midori_preview.deps import AdminUser, ServicesDep
from midori_preview.observability.metrics import exposition, headline
from midori_preview.previews.admin_routes import ADMIN_ONLY, ok

METRICS_EXAMPLE = """# HELP midori_preview_sandboxes Sandboxes in the active view, by state.
# TYPE midori_preview_sandboxes gauge
midori_preview_sandboxes{state="running"} 3.0
# HELP midori_preview_sandbox_creates_total Sandboxes admitted, by kind and source.
# TYPE midori_preview_sandbox_creates_total counter
midori_preview_sandbox_creates_total{kind="user",source="files"} 42.0
"""
HEADLINE_EXAMPLE = {
    "sandboxesByState": {"running": 3, "stopped": 40},
    "creates": 42,
    "stopsByReason": {"idle": 12, "user": 27},
    "quotaRejections": {"concurrency_limit": 4},
    "usageChargedSeconds": 51234,
    "githubDeliveries": {"accepted": 8},
    "providerErrors": {},
    "requests": 1234,
    "serverErrors": 0,
    "meanRequestSeconds": 0.012,
    "meanTimeToReadySeconds": 4.2,
    "readyCount": 40,
}

router = APIRouter(tags=["observability"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text format.",
            "content": {"text/plain": {"example": METRICS_EXAMPLE}},
        }
    },
)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics (no user ids or secrets in any label)."""
    by_state = await services.db.sandboxes.status_counts()
    return Response(
        exposition({str(k): v for k, v in by_state.items()}), media_type=CONTENT_TYPE_LATEST
    )


@router.get(
    "/api/preview/admin/metrics",
    tags=["admin"],
    responses={**ADMIN_ONLY, **ok("The headline figures.", figures=HEADLINE_EXAMPLE)},
)
async def admin_metrics(_: AdminUser, services: ServicesDep) -> dict[str, Any]:
    """Admin: the headline figures of `/metrics` (what the admin page shows)."""
    by_state = await services.db.sandboxes.status_counts()
    return headline({str(k): v for k, v in by_state.items()})
