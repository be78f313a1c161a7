"""What keeps the per-request cost down (see docs/DESIGN.md, "Per-request overhead"): no route's
dependency runs in FastAPI's thread pool, and the hot routes are matched first."""

from __future__ import annotations

import inspect
from pathlib import Path

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from midori_preview.app import create_app
from midori_preview.github.routes import router as github
from midori_preview.health_routes import router as health
from midori_preview.observability.context import bind_request_sandbox
from midori_preview.observability.routes import router as observability
from midori_preview.previews.admin_routes import router as admin
from midori_preview.previews.routes import router as previews
from midori_preview.settings import Settings
from midori_preview.web.routes import router as web

ROUTERS = (previews, health, admin, github, web, observability)


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
