"""The composition root: `build_services` builds every long-lived service once, into one typed
container (`Services`), and `Services.aclose` closes them. The one place that picks concrete
classes (the provider, Redis or the in-process store, the database); `app.py` keeps the container
on the app and routes reach it only through `deps.py`."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine

from midori_preview.auth import Authenticator
from midori_preview.auth_nextauth import SessionCookieAuth
from midori_preview.clock import Clock
from midori_preview.db.database import Database
from midori_preview.db.engine import make_engine, make_unpinged_engine, upgrade_head_async
from midori_preview.db.repositories import Repositories
from midori_preview.events import EventBus
from midori_preview.gateway.gateway import PreviewGateway
from midori_preview.gateway.labels import PreviewLinks
from midori_preview.github.service import GitHubService
from midori_preview.kv import make_redis
from midori_preview.logging import get_logger
from midori_preview.observability.provider import instrumented
from midori_preview.previews.admin import AdminService
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.reaper import Reaper
from midori_preview.previews.service import PreviewService
from midori_preview.providers.base import SandboxProvider
from midori_preview.quota.service import QuotaService
from midori_preview.scheduler import build_scheduler
from midori_preview.settings import Settings

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = get_logger(__name__)


@dataclass(slots=True)
class Services:
    """Every long-lived service of one app instance."""

    settings: Settings
    clock: Clock
    replica_id: str
    engine: AsyncEngine
    db: Repositories
    redis: Any  # redis.asyncio.Redis, or the in-process store
    quota: QuotaService
    events: EventBus
    provider: SandboxProvider
    previews: PreviewService
    reaper: Reaper
    admin: AdminService
    github: GitHubService
    authenticator: Authenticator
    gateway: PreviewGateway  # every preview host, whatever the provider
    scheduler: AsyncIOScheduler | None  # None when REAPER_ENABLED is false
    owns_provider: bool  # built here (not handed in): closed here
    owns_redis: bool
    isolation: dict[str, object] | None = None  # local sandboxes: what isolates them (/readyz)

    async def aclose(self) -> None:
        """Stop the background work, then close every client (in reverse order of need)."""
        await self.github.aclose()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.previews.shutdown()
        await self.gateway.aclose()
        if self.owns_provider:
            await self.provider.aclose()
        if self.owns_redis:
            await self.redis.aclose()
        await self.db.database.dispose()


async def build_services(
    settings: Settings,
    *,
    clock: Clock,
    provider: SandboxProvider | None = None,
    redis: Any = None,
    run_migrations: bool = True,
) -> Services:
    """Build (and start) every service. `provider` and `redis` are used as given (tests share
    them between app instances) and then not closed here."""
    authenticator = build_authenticator(settings)  # a misconfiguration fails before any I/O
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db_url = settings.effective_database_url
    if run_migrations:
        await upgrade_head_async(db_url)
    engine, status_engine = build_engines(settings, db_url)
    db = Repositories.on(Database(engine, status_engine))
    kv = redis if redis is not None else make_redis(settings.redis_url)
    prefix = f"mp:{settings.preview_deployment}"
    quota = QuotaService(kv, prefix=prefix)
    events = EventBus(kv, prefix=prefix, ttl_seconds=settings.state_retention_seconds)
    raw = provider if provider is not None else build_provider(settings, clock)
    prov = instrumented(raw)  # every call timed, its errors counted (/metrics)
    replica = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    links = build_links(settings, prov.name)
    previews = build_previews(settings, db, quota, events, prov, clock, replica, links)
    if provider is None and prov.name == "local":
        await previews.close_leftovers()  # local sandboxes do not outlive their process
    reaper = Reaper(
        settings=settings,
        sandboxes=db.sandboxes,
        usage=db.usage,
        idempotency=db.idempotency,
        service_state=db.service_state,
        quota=quota,
        events=events,
        service=previews,
        clock=clock,
    )
    github = GitHubService.from_settings(
        settings, previews=previews, store=db.github, events=events, clock=clock
    )
    scheduler = build_scheduler(settings, reaper=reaper, github=github)
    services = Services(
        settings=settings,
        clock=clock,
        replica_id=replica,
        engine=engine,
        db=db,
        redis=kv,
        quota=quota,
        events=events,
        provider=prov,
        previews=previews,
        reaper=reaper,
        admin=AdminService(
            sandboxes=db.sandboxes,
            usage=db.usage,
            reaper=reaper,
            scheduler=scheduler,
            tz=previews.tz,
        ),
        github=github,
        authenticator=authenticator,
        gateway=PreviewGateway(
            previews=previews,
            links=links,
            clock=clock,
            reload_script=settings.preview_reload_script,
        ),
        scheduler=scheduler,
        owns_provider=provider is None,
        owns_redis=redis is None,
        isolation=watch_local_limits(raw, previews),
    )
    if scheduler is not None:
        scheduler.start()
    log.info("service.started", provider=prov.name, replica=replica, db=engine.dialect.name)
    return services


def build_engines(settings: Settings, url: str) -> tuple[AsyncEngine, AsyncEngine | None]:
    """The database engine with the pool the settings size (each replica has its own), and the
    status read's unpinged pool beside it: a quarter of that size (Postgres only)."""
    size, overflow = settings.database_pool_size, settings.database_max_overflow
    wait = settings.database_pool_timeout_seconds
    return (
        make_engine(url, pool_size=size, max_overflow=overflow, pool_timeout=wait),
        make_unpinged_engine(
            url, pool_size=max(size // 4, 1), max_overflow=max(overflow // 4, 1), pool_timeout=wait
        ),
    )


def build_previews(
    settings: Settings,
    db: Repositories,
    quota: QuotaService,
    events: EventBus,
    provider: SandboxProvider,
    clock: Clock,
    replica_id: str,
    links: PreviewLinks,
) -> PreviewService:
    """The preview lifecycle, with the template build cache when TEMPLATE_BUILD_CACHE is on."""
    cache = (
        BuildCache(settings.data_dir.resolve() / "cache" / "builds")
        if settings.template_build_cache
        else None
    )
    return PreviewService(
        settings=settings,
        sandboxes=db.sandboxes,
        usage=db.usage,
        idempotency=db.idempotency,
        quota=quota,
        events=events,
        provider=provider,
        clock=clock,
        replica_id=replica_id,
        links=links,
        build_cache=cache,
        sources=db.sources,
        pending_deletes=db.pending_deletes,
    )


def build_authenticator(settings: Settings) -> Authenticator:
    """Bearer JWTs, NextAuth/Auth.js session cookies when their secret is set, or dev auth."""
    authenticator = Authenticator(settings)
    if settings.nextauth_secret or settings.auth_secret:
        authenticator.extra.append(SessionCookieAuth.from_settings(settings))
    if settings.effective_auth_mode == "dev":
        log.warning(
            "auth.dev_mode",
            message="AUTH_MODE=dev: callers name themselves with X-User-Id. "
            "Set AUTH_JWT_SECRET for production.",
        )
    return authenticator


def build_links(settings: Settings, provider_name: str) -> PreviewLinks:
    """The service's preview links, signed with PREVIEW_SIGNING_SECRET (else a key kept in
    DATA_DIR: it survives restarts, but only this host has it)."""
    if settings.preview_signing_secret is not None:
        key = settings.preview_signing_secret.get_secret_value().encode()
    else:
        key = _data_dir_key(settings)
        if provider_name != "local":
            log.warning(
                "gateway.signing_key_not_shared",
                message="PREVIEW_SIGNING_SECRET is unset: preview links are signed with a key "
                "in DATA_DIR. Set one secret on every replica, or links open on one only.",
            )
    return PreviewLinks(
        key=key,
        base_domain=settings.preview_base_domain,
        scheme=settings.preview_scheme,
        public_port=settings.effective_preview_port,
    )


def _data_dir_key(settings: Settings) -> bytes:
    path = settings.data_dir / "preview-signing.key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        key = secrets.token_bytes(32)
        f.write(key)
    return key


def build_provider(settings: Settings, clock: Clock) -> SandboxProvider:
    """The provider the settings ask for: Daytona with DAYTONA_API_KEY, else local sandboxes."""
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
                delete_deadline_seconds=settings.daytona_delete_deadline_seconds,
            ),
            clock=clock,
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
    local = LocalProvider(
        LocalProviderConfig(
            root=(settings.data_dir / "sandboxes").resolve(),
            isolation=isolation,
            limits=Limits(
                memory_mb=settings.local_sandbox_memory_mb,
                max_processes=settings.local_sandbox_max_processes,
                max_file_mb=settings.local_sandbox_max_file_mb,
                tmp_mb=settings.local_sandbox_tmp_mb,
                disk_mb=settings.local_sandbox_disk_mb,
            ),
            npm_cache=(settings.data_dir / "cache" / "npm").resolve()
            if settings.local_npm_cache
            else None,
            clock=clock,
            network=settings.local_sandbox_network,
            unisolated=settings.effective_unisolated_commands,
            trusted_commands=trusted_commands(),
            watch_seconds=settings.local_sandbox_watch_seconds,
        )
    )
    if not local.runner.network_isolated:
        refused = settings.effective_unisolated_commands == "refuse"
        log.warning(
            "local.no_network_isolation",
            reason=local.runner.network.problem,
            message="local sandboxes share this host's network: their commands can reach its "
            "loopback services (database, Redis, this API) "
            + (
                "- user-supplied commands are refused (LOCAL_SANDBOX_UNISOLATED_COMMANDS)"
                if refused
                else "- and user-supplied commands run anyway (LOCAL_SANDBOX_UNISOLATED_COMMANDS)"
            )
            + "; apt-get install bubblewrap passt on a host that allows network namespaces",
        )
    return local


def watch_local_limits(
    provider: SandboxProvider, previews: PreviewService
) -> dict[str, object] | None:
    """Local sandboxes: the service stops a preview whose sandbox went past its limits; and
    what isolates them here, for /readyz (Daytona's are VMs of their own)."""
    from midori_preview.providers.local import LocalProvider

    if not isinstance(provider, LocalProvider):
        return None
    provider.on_limit = previews.end_over_limit
    return provider.isolation


def trusted_commands() -> frozenset[str]:
    """The service's own command lines (the templates' and the static server): the ones a
    local sandbox still runs when it cannot isolate user-supplied ones."""
    from midori_preview.providers.commands import STATIC_SERVER
    from midori_preview.templates import TEMPLATES, render_template

    commands = {STATIC_SERVER}
    for name in TEMPLATES:
        build = render_template(name, {})
        commands.update(c for c in (build.install, build.build, build.start) if c)
    return frozenset(commands)
