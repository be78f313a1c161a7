"""create_app(settings): the lifespan builds every long-lived client; routers; error handlers.
This is the one place that chooses concrete classes."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException

from midori_preview.auth import Authenticator
from midori_preview.auth_nextauth import SessionCookieAuth
from midori_preview.clock import Clock, SystemClock
from midori_preview.db.engine import make_engine, session_factory, upgrade_head_async
from midori_preview.db.repo import Repository
from midori_preview.errors import PayloadTooLarge, ServiceError, validation_error_body
from midori_preview.events import EventBus
from midori_preview.github.routes import router as github_router
from midori_preview.github.service import GitHubService
from midori_preview.kv import make_redis
from midori_preview.logging import configure_logging, get_logger
from midori_preview.previews.admin import AdminService
from midori_preview.previews.admin_routes import router as admin_router
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.reaper import Reaper
from midori_preview.previews.routes import router as previews_router
from midori_preview.previews.service import PreviewService
from midori_preview.providers.base import SandboxProvider
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from midori_preview.web import mount_web

log = get_logger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def build_provider(settings: Settings) -> SandboxProvider:
    if settings.provider_name == "daytona":
        from midori_preview.providers.daytona import DaytonaProvider, DaytonaProviderConfig

        assert settings.daytona_api_key is not None
        daytona: SandboxProvider = DaytonaProvider(
            DaytonaProviderConfig(
                api_key=settings.daytona_api_key.get_secret_value(),
                api_url=settings.daytona_api_url,
                target=settings.daytona_target,
                snapshot=settings.daytona_snapshot,
                image=settings.daytona_image,
                deployment=settings.preview_deployment,
                idle_timeout_seconds=settings.idle_timeout_seconds,
                cpu=settings.daytona_cpu,
                memory=settings.daytona_memory_gb,
                disk=settings.daytona_disk_gb,
                request_timeout_seconds=settings.daytona_request_timeout_seconds,
                retry_attempts=settings.daytona_retry_attempts,
                retry_deadline_seconds=settings.daytona_retry_deadline_seconds,
            )
        )
        return daytona
    from midori_preview.providers.local import LocalProvider, LocalProviderConfig
    from midori_preview.providers.local.runner import Limits, bwrap_path

    isolation = settings.local_sandbox_isolation
    if isolation == "auto" and bwrap_path() is None:
        log.warning(
            "local.no_isolation",
            message="bubblewrap is not installed: local sandboxes run as plain processes "
            "(apt-get install bubblewrap for namespaces and a read-only system)",
        )
    key = (
        settings.preview_signing_secret.get_secret_value().encode()
        if settings.preview_signing_secret
        else secrets.token_bytes(32)
    )
    return LocalProvider(
        LocalProviderConfig(
            root=(settings.data_dir / "sandboxes").resolve(),
            isolation=isolation,
            limits=Limits(
                memory_mb=settings.local_sandbox_memory_mb,
                max_processes=settings.local_sandbox_max_processes,
                max_file_mb=settings.local_sandbox_max_file_mb,
                tmp_mb=settings.local_sandbox_tmp_mb,
            ),
            base_domain=settings.preview_base_domain,
            public_port=settings.effective_preview_port,
            scheme=settings.preview_scheme,
            signing_key=key,
            npm_cache=(settings.data_dir / "cache" / "npm").resolve()
            if settings.local_npm_cache
            else None,
        )
    )


class PreviewHostMiddleware:
    """Requests for `*.{PREVIEW_BASE_DOMAIN}` go to the local preview proxy, all else to the API."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], fastapi: FastAPI):
        self.app = app
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        proxy = getattr(self.fastapi.state, "preview_proxy", None)
        if proxy is not None and scope["type"] in ("http", "websocket"):
            label = proxy.match(scope)
            if label is not None:
                await proxy.handle(scope, receive, send, label)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    err = PayloadTooLarge(f"Request body is larger than {self.limit} bytes.")
                    await JSONResponse(err.body(), status_code=err.http_status)(
                        scope, receive, send
                    )
                    return
        await self.app(scope, receive, send)


def _error(code: str, message: str, status: int, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status)


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """What was wrong with a JSON body FastAPI could not even decode, or None for other errors.
    FastAPI answers such a body (not UTF-8, nested too deeply for the parser, an integer too long
    to convert) with a bare 400, raised from the decoding error; to a caller it is as malformed
    as any other bad JSON, which is a 422 `validation_error`."""
    cause = exc.__cause__
    if exc.status_code != 400 or not isinstance(cause, ValueError | RecursionError):
        return None
    if isinstance(cause, UnicodeDecodeError):
        return "JSON body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "JSON body is nested too deeply"
    return "JSON body could not be decoded"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "message": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return JSONResponse(validation_error_body(details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = _unparsable_body(exc)
        if problem is not None:
            return JSONResponse(
                validation_error_body([{"loc": ["body"], "message": problem}]), status_code=422
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(code, str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def unhandled(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.crashed", path=request.url.path)
        return _error("internal_error", "Something went wrong on our side.", 500)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    provider: SandboxProvider | None = None,
    redis: Any = None,
    run_migrations: bool = True,
) -> FastAPI:
    settings = settings or Settings()
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db_url = settings.effective_database_url
        if run_migrations:
            await upgrade_head_async(db_url)
        engine = make_engine(db_url)
        repo = Repository(
            session_factory(engine),
            reads=session_factory(engine.execution_options(isolation_level="AUTOCOMMIT")),
        )
        kv = redis if redis is not None else make_redis(settings.redis_url)
        prefix = f"mp:{settings.preview_deployment}"
        quota = QuotaService(kv, prefix=prefix)
        events = EventBus(kv, prefix=prefix, ttl_seconds=settings.state_retention_seconds)
        prov = provider if provider is not None else build_provider(settings)
        replica = (
            settings.replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        previews = PreviewService(
            settings=settings,
            repo=repo,
            quota=quota,
            events=events,
            provider=prov,
            clock=clock,
            replica_id=replica,
            build_cache=BuildCache(settings.data_dir.resolve() / "cache" / "builds")
            if settings.template_build_cache
            else None,
        )
        if provider is None and prov.name == "local":
            await previews.close_leftovers()  # local sandboxes do not outlive their process
        app.state.settings = settings
        app.state.clock = clock
        app.state.engine = engine
        app.state.repo = repo
        app.state.redis = kv
        app.state.quota = quota
        app.state.events = events
        app.state.provider = prov
        app.state.previews = previews
        app.state.authenticator = Authenticator(settings)
        if settings.nextauth_secret or settings.auth_secret:
            app.state.authenticator.extra.append(SessionCookieAuth.from_settings(settings))
        reaper = Reaper(
            settings=settings,
            repo=repo,
            quota=quota,
            events=events,
            service=previews,
            provider=prov,
            clock=clock,
        )
        scheduler = None
        if settings.reaper_enabled:
            scheduler = AsyncIOScheduler(timezone="UTC")
            scheduler.add_job(
                reaper.tick,
                "interval",
                seconds=settings.reaper_interval_seconds,
                id="reaper",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=settings.reaper_interval_seconds,
            )
            scheduler.start()
        app.state.reaper = reaper
        app.state.scheduler = scheduler
        app.state.admin = AdminService(repo=repo, reaper=reaper, scheduler=scheduler)
        github = GitHubService.from_settings(
            settings, previews=previews, sessions=repo.sessions, events=events, clock=clock
        )
        app.state.github = github
        proxy = None
        if prov.name == "local":
            from midori_preview.providers.local import LocalProvider
            from midori_preview.providers.local.proxy import PreviewProxy

            assert isinstance(prov, LocalProvider)
            proxy = PreviewProxy(prov, settings.preview_base_domain)
        app.state.preview_proxy = proxy
        if settings.effective_auth_mode == "dev":
            log.warning(
                "auth.dev_mode",
                message="AUTH_MODE=dev: callers name themselves with X-User-Id. "
                "Set AUTH_JWT_SECRET for production.",
            )
        log.info("service.started", provider=prov.name, replica=replica, db=engine.dialect.name)
        try:
            yield
        finally:
            await github.aclose()
            if scheduler is not None:
                scheduler.shutdown(wait=False)
            await previews.shutdown()
            if proxy is not None:
                await proxy.aclose()
            if provider is None:
                await prov.aclose()
            if redis is None:
                await kv.aclose()
            await engine.dispose()

    configure_logging(settings.log_level, json=settings.log_json)
    app = FastAPI(
        title="midori-preview",
        version="0.1.0",
        description="Live, private previews of Midori projects in isolated sandboxes.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(admin_router)
    app.include_router(previews_router)
    app.include_router(github_router)
    mount_web(app)

    @app.get(
        "/healthz",
        tags=["health"],
        responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
    )
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            200: {
                "description": "Ready.",
                "content": {
                    "application/json": {
                        "example": {"status": "ok", "database": True, "redis": True}
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
    async def readyz(request: Request) -> JSONResponse:
        """The database and Redis are reachable."""
        state = request.app.state
        db_ok = True
        try:
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            db_ok = False
        redis_ok = await state.quota.ping()
        ok = db_ok and redis_ok
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "database": db_ok, "redis": redis_ok},
            status_code=200 if ok else 503,
        )

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
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes + 1024 * 1024)
    app.add_middleware(PreviewHostMiddleware, fastapi=app)
    return app
