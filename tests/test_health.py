"""Liveness, readiness (with what is and is not reachable) and the API's own documentation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from midori_preview.app import create_app
from midori_preview.settings import Settings
from tests.conftest import Backend, Running, make_settings
from tests.previews.helpers import free_port

HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


async def test_healthz(service_app: Running) -> None:
    res = await service_app.client.get("/healthz")
    assert res.status_code == 200
    assert res.json() == {"status": "ok"}


async def test_readyz_with_database_and_redis(service_app: Running) -> None:
    res = await service_app.client.get("/readyz")
    assert res.status_code == 200
    body = res.json()
    isolation = body.pop("sandboxIsolation")  # local sandboxes: what isolates them here
    assert body == {"status": "ok", "database": True, "redis": True}
    runner = service_app.services.provider.runner  # type: ignore[attr-defined]
    assert isolation == {
        "bubblewrap": runner.isolated,
        "network": runner.network_isolated,
        "problem": runner.network.problem,
        "unisolatedCommands": "run",  # dev mode: a developer's own commands run in any case
        "processLimit": service_app.services.provider.process_limit,  # type: ignore[attr-defined]
        "diskLimitMb": service_app.settings.local_sandbox_disk_mb,
    }


@asynccontextmanager
async def bare_app(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        ) as client,
    ):
        yield client


async def test_readyz_says_which_dependency_is_down(tmp_path: Path, pg_backend: Backend) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    settings = make_settings(tmp_path, pg_backend, redis_url=dead_redis)
    async with bare_app(settings) as client:
        assert (await client.get("/healthz")).status_code == 200  # up, but not ready
        res = await client.get("/readyz")
    assert res.status_code == 503
    body = res.json()
    body.pop("sandboxIsolation")
    assert body == {"status": "unavailable", "database": True, "redis": False}


async def test_docs_and_openapi_are_served(service_app: Running) -> None:
    docs = await service_app.client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text.lower()
    assert "/openapi.json" in docs.text

    res = await service_app.client.get("/openapi.json")
    assert res.status_code == 200
    spec = res.json()
    paths = spec["paths"]
    for path in (
        "/api/preview/daytona",
        "/api/preview/daytona/status",
        "/api/preview/daytona/events",
        "/api/preview/daytona/stop",
        "/api/preview/daytona/heartbeat",
        "/api/preview/daytona/{sandbox_id}",
        "/healthz",
        "/readyz",
    ):
        assert path in paths, path
    undocumented = [
        f"{method.upper()} {path}"
        for path, item in paths.items()
        for method, op in item.items()
        if method in HTTP_METHODS and not op.get("description", "").strip()
    ]
    assert undocumented == []
    create = paths["/api/preview/daytona"]["post"]
    assert "Idempotency-Key" in create["description"]
    assert {"202", "409", "422"} <= set(create["responses"])
