"""What keeps the per-request cost down (see docs/DESIGN.md, "Per-request overhead"): no route's
dependency runs in FastAPI's thread pool, the hot routes are matched first, and no dependency is
app-wide (the request's sandbox id reaches the logs without one)."""

from __future__ import annotations

import inspect
from pathlib import Path

import httpx
import structlog
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from structlog.testing import capture_logs

from midori_preview.app import create_app
from midori_preview.github.routes import router as github
from midori_preview.health_routes import router as health
from midori_preview.logging import configure_logging
from midori_preview.observability.context import RequestContextMiddleware, bind_request_sandbox
from midori_preview.observability.routes import router as observability
from midori_preview.previews.admin_routes import router as admin
from midori_preview.previews.routes import router as previews
from midori_preview.settings import Settings
from midori_preview.web.routes import router as web

ROUTERS = (previews, health, admin, github, web, observability)
log = structlog.get_logger("test")


def _calls(dependant: Dependant) -> list[object]:
    found: list[object] = []
    for sub in dependant.dependencies:
        if sub.call is not None:
            found.append(sub.call)
        found += _calls(sub)
    return found


def _is_async(call: object) -> bool:
    if inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call):
        return True
    method = getattr(call, "__call__", None)  # noqa: B004 - a dependency class's instance
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


def test_no_dependency_or_endpoint_runs_in_the_thread_pool() -> None:
    # FastAPI runs a plain `def` dependency or endpoint in its thread pool: a thread hand-off
    # per call per request (a fifth of a heartbeat's CPU time when deps.py was sync).
    routes = [r for router in ROUTERS for r in router.routes if isinstance(r, APIRoute)]
    assert len(routes) > 10
    assert _is_async(bind_request_sandbox)  # the app-wide one
    sync = sorted(
        {
            f"{route.path}: {getattr(call, '__qualname__', call)}"
            for route in routes
            for call in [route.endpoint, *_calls(route.dependant)]
            if not _is_async(call)
        }
    )
    assert sync == []


def test_heartbeat_and_status_are_matched_before_other_routers(tmp_path: Path) -> None:
    paths = list(create_app(Settings(data_dir=tmp_path)).openapi()["paths"])  # in match order
    hot = [
        paths.index(p) for p in ("/api/preview/daytona/heartbeat", "/api/preview/daytona/status")
    ]
    assert max(hot) < paths.index("/api/preview/cleanup"), paths


def test_no_app_wide_dependency(tmp_path: Path) -> None:
    # An app-wide dependency is solved for every request, `/healthz` too (a fifth of its time).
    assert create_app(Settings(data_dir=tmp_path)).router.dependencies == []


async def test_the_query_sandbox_id_is_on_the_logs_without_a_dependency() -> None:
    app = FastAPI()

    @app.get("/things")
    async def by_query() -> dict[str, str]:
        log.info("by_query")
        return {}

    app.add_middleware(RequestContextMiddleware)
    configure_logging("DEBUG")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                await client.get("/things", params={"x": "1", "sandboxId": "sbx2"})
                await client.get("/things", params={"sandboxId": "bad id!"})
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("WARNING")
    good, bad = [e for e in entries if e["event"] == "by_query"]
    assert good["sandbox_id"] == "sbx2" and "sandbox_id" not in bad
