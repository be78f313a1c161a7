"""create_app(settings): the FastAPI app — its lifespan (the services of `bootstrap.py`), its
middleware, routers and error handlers."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from midori_preview.body_guard import BodyGuardMiddleware
from midori_preview.body_guard import install as install_body_guard
from midori_preview.bootstrap import build_services
from midori_preview.clock import Clock, SystemClock
from midori_preview.github.routes import router as github_router
from midori_preview.handlers import install_error_handlers
from midori_preview.health_routes import router as health_router
from midori_preview.logging import configure_logging
from midori_preview.middleware import BodyLimitMiddleware, PreviewHostMiddleware
from midori_preview.observability.context import RequestContextMiddleware
from midori_preview.observability.routes import router as observability_router
from midori_preview.previews.admin_routes import router as admin_router
from midori_preview.previews.routes import router as previews_router
from midori_preview.providers.base import SandboxProvider
from midori_preview.settings import Settings
from midori_preview.web import mount_web


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    provider: SandboxProvider | None = None,
    redis: Any = None,
    run_migrations: bool = True,
    freeze_gc: bool = False,
) -> FastAPI:
    """The service as an ASGI app. `clock`, `provider` and `redis` replace the ones the settings
    would build (tests); `app.state.services` holds the container while the app runs.
    `freeze_gc` (the served process): once started, everything alive then (modules, the app, its
    services) is moved out of the garbage collector's sight (`gc.freeze`), so its collections
    under load walk only what requests create."""
    settings = settings or Settings()
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await build_services(
            settings, clock=clock, provider=provider, redis=redis, run_migrations=run_migrations
        )
        app.state.services = services
        if freeze_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await services.aclose()

    configure_logging(settings.log_level, json=settings.log_json)
    app = FastAPI(
        title="midori-preview",
        version="0.1.0",
        description="Live, private previews of Midori projects in isolated sandboxes.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_body_guard(app)
    # Routes are matched in this order, each router walked in turn: the hot ones first (a
    # heartbeat or a status matched before admin's routes are tried; no two routers' paths
    # overlap, so the order changes nothing else).
    app.include_router(previews_router)
    app.include_router(health_router)
    app.include_router(admin_router)
    app.include_router(github_router)
    mount_web(app)
    app.include_router(observability_router)
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=True,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=[
                "authorization",
                "content-type",
                "idempotency-key",
                "last-event-id",
                *(["x-user-id", "x-user-role"] if settings.effective_auth_mode == "dev" else []),
            ],
            expose_headers=["location", "retry-after"],
        )
    limit = settings.max_request_bytes + 1024 * 1024
    app.add_middleware(
        BodyGuardMiddleware, limit=limit, timeout=settings.request_body_timeout_seconds
    )
    app.add_middleware(BodyLimitMiddleware, limit=limit)
    app.add_middleware(PreviewHostMiddleware, fastapi=app)
    app.add_middleware(RequestContextMiddleware)  # outermost: request id, latency
    return app
