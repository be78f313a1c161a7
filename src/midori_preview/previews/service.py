"""PreviewService: the sandbox lifecycle's one public face. Routes, the reaper and the GitHub
integration call it; each use case lives in its own module:

- `admission.py`: create (idempotency, same-source reuse, rate, daily cap, slot) → a build
- `builds.py` + `pipeline.py`: the build in the background (create → … → running)
- `heartbeats.py` + `charging.py`: heartbeats, preview time, the day's cap
- `stops.py`: stop, reap, retry a stuck stop, fail a lost build, close a lost row
- `reaping.py`: the reaper's stops, a batch of due rows at a time
- `views.py`: the status answers
- `transitions.py`: every state change (checked against `states.py`, CAS, `status` event)"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo

from midori_preview.clock import Clock
from midori_preview.db.idempotency import IdempotencyRepository
from midori_preview.db.models import Sandbox
from midori_preview.db.pending_deletes import PendingDeleteRepository
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.sources import SourceRepository
from midori_preview.db.status_rows import StatusRows
from midori_preview.db.usage import UsageRepository
from midori_preview.errors import SandboxNotFound, SandboxNotRunning
from midori_preview.events import Event, EventBus
from midori_preview.gateway.labels import PreviewLinks
from midori_preview.logging import get_logger
from midori_preview.previews.admission import Admission, Terms
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.builds import Builds
from midori_preview.previews.charging import Charger
from midori_preview.previews.deletes import Deletes
from midori_preview.previews.heartbeats import Heartbeats
from midori_preview.previews.pipeline import Pipeline, PipelineSettings
from midori_preview.previews.reaping import Reaping
from midori_preview.previews.schemas import (
    Created,
    CreatePreview,
    HeartbeatOut,
    PreviewStatus,
    SourceUpdated,
    UpdateSource,
    Usage,
)
from midori_preview.previews.sources import CredentialSource
from midori_preview.previews.states import SandboxStatus
from midori_preview.previews.stops import Stops
from midori_preview.previews.transitions import Transitions
from midori_preview.previews.updates import SourceUpdates
from midori_preview.previews.views import HostView, host_view_of, owned_row, status_of
from midori_preview.providers.base import (
    ProviderError,
    ProviderSandboxInfo,
    SandboxProvider,
    Upstream,
)
from midori_preview.providers.labels import owned_selector
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings

log = get_logger(__name__)


class PreviewService:
    def __init__(
        self,
        *,
        settings: Settings,
        sandboxes: SandboxRepository,
        usage: UsageRepository,
        idempotency: IdempotencyRepository,
        quota: QuotaService,
        events: EventBus,
        provider: SandboxProvider,
        clock: Clock,
        replica_id: str,
        links: PreviewLinks,
        build_cache: BuildCache | None = None,
        sources: SourceRepository | None = None,
        pending_deletes: PendingDeleteRepository | None = None,
    ) -> None:
        self.settings = settings
        # How long a fresh sandbox may be missing from the provider's listings.
        self.list_lag_seconds = (
            settings.daytona_list_lag_seconds if provider.name == "daytona" else 0.0
        )
        self.deletes = Deletes(  # provider deletes nothing forgets (the reaper drains them)
            repo=pending_deletes or PendingDeleteRepository(sandboxes.db),
            provider=provider,
            clock=clock,
            deployment=settings.preview_deployment,
            list_lag_seconds=self.list_lag_seconds,
            retry_seconds=settings.pending_delete_retry_seconds,
        )
        self.links = links  # the service's own preview links (the gateway serves them)
        self._upstreams: dict[str, Upstream] = {}  # rows that ran before upstreams were stored
        self.repo = sandboxes  # the sandbox rows (the GitHub exporter reads them too)
        self.status_rows = StatusRows(sandboxes.db)  # the status answer's own lean read
        self.quota = quota
        self.events = events
        self.provider = provider
        self.clock = clock
        self.replica_id = replica_id
        self.tz = ZoneInfo(settings.usage_timezone)
        self.slot_lease_seconds = (
            settings.idle_timeout_seconds + 2 * settings.reaper_interval_seconds + 60
        )
        self.transitions = Transitions(sandboxes=sandboxes, events=events, clock=clock)
        charger = self._charger(usage)
        self.builds = Builds(
            pipeline=self._pipeline(sandboxes, build_cache),
            deployment=settings.preview_deployment,
        )
        self.stops = Stops(
            sandboxes=sandboxes,
            transitions=self.transitions,
            charger=charger,
            quota=quota,
            provider=provider,
            builds=self.builds,
            clock=clock,
            links=links,
            deletes=self.deletes,
        )
        self.reaping = self._reaping(charger)  # the reaper's stops, a batch at a time
        self.heartbeats = Heartbeats(
            settings=settings,
            sandboxes=sandboxes,
            charger=charger,
            stops=self.stops,
            clock=clock,
            tz=self.tz,
        )
        self.updates = SourceUpdates(
            settings=settings,
            sandboxes=sandboxes,
            sources=sources or SourceRepository(sandboxes.db),
            provider=provider,
            events=events,
            quota=quota,
            clock=clock,
        )
        self.admission = self._admission(sandboxes, idempotency)

    def _charger(self, usage: UsageRepository) -> Charger:
        return Charger(
            settings=self.settings,
            usage=usage,
            quota=self.quota,
            tz=self.tz,
            slot_lease_seconds=self.slot_lease_seconds,
        )

    def _reaping(self, charger: Charger) -> Reaping:
        return Reaping(
            transitions=self.transitions,
            beats=charger.beats,
            quota=self.quota,
            provider=self.provider,
            builds=self.builds,
            stops=self.stops,
            clock=self.clock,
            concurrency=self.settings.reaper_concurrency,
        )

    def _admission(
        self, sandboxes: SandboxRepository, idempotency: IdempotencyRepository
    ) -> Admission:
        return Admission(
            settings=self.settings,
            sandboxes=sandboxes,
            idempotency=idempotency,
            quota=self.quota,
            transitions=self.transitions,
            heartbeats=self.heartbeats,
            stops=self.stops,
            builds=self.builds,
            clock=self.clock,
            tz=self.tz,
            provider_name=self.provider.name,
            replica_id=self.replica_id,
            slot_lease_seconds=self.slot_lease_seconds,
            record_source=self.updates.record,
        )

    def _pipeline(self, sandboxes: SandboxRepository, cache: BuildCache | None) -> Pipeline:
        s = self.settings

        async def release(sandbox_id: str) -> None:
            row = await sandboxes.get(sandbox_id)
            if row is not None:
                await self.stops.release(row.user_id, sandbox_id)

        return Pipeline(
            cache=cache,
            provider=self.provider,
            sandboxes=sandboxes,
            transitions=self.transitions,
            events=self.events,
            clock=self.clock,
            settings=PipelineSettings(
                create_timeout=s.sandbox_create_timeout_seconds,
                upload_timeout=s.upload_timeout_seconds,
                step_timeout=s.build_step_timeout_seconds,
                start_timeout=s.start_timeout_seconds,
                clone_timeout=s.git_clone_timeout_seconds,
                lease_seconds=s.build_lease_seconds,
                probe_interval=self.provider.probe_interval,
            ),
            replica_id=self.replica_id,
            on_failed=release,
            deletes=self.deletes,
        )

    # --- create -----------------------------------------------------------------------------

    async def create(
        self,
        user_id: str,
        body: CreatePreview,
        *,
        idempotency_key: str | None = None,
        kind: str = "user",
        concurrency_limit: int | None = None,
        ttl_seconds: int | None = None,
        check_daily_quota: bool = True,
        extra_git_prefixes: Sequence[str] = (),
        git_credentials: CredentialSource | None = None,
        rate: tuple[str, int] | None = None,
    ) -> tuple[int, Created]:
        """Admit a preview and start its build in the background: (HTTP status, answer).
        `extra_git_prefixes`: git URL prefixes this caller may clone from besides
        GIT_ALLOWED_URL_PREFIXES (the GitHub integration's own clone base);
        `git_credentials`: asked for the clone's credentials right before it (private repos);
        `rate`: (key, per minute) of a create budget of its own instead of the user's."""
        terms = Terms(
            kind,
            concurrency_limit,
            ttl_seconds,
            check_daily_quota,
            extra_git_prefixes,
            git_credentials,
            rate_key=rate[0] if rate else None,
            rate_per_minute=rate[1] if rate else None,
        )
        return await self.admission.create(user_id, body, key=idempotency_key, terms=terms)

    async def update_source(
        self, sandbox_id: str, user_id: str, body: UpdateSource
    ) -> SourceUpdated:
        """Update the caller's running preview in place (`previews.updates`)."""
        return await self.updates.update(sandbox_id, user_id, body)

    # --- read -------------------------------------------------------------------------------

    async def status(self, sandbox_id: str, user_id: str | None) -> PreviewStatus:
        """The sandbox's status with the owner's usage today (404 unless `user_id` owns it)."""
        if user_id is None:
            row = await owned_row(self.repo, sandbox_id, None)
            return status_of(row, self.links, usage=await self.usage(row.user_id))
        found = await self.status_rows.for_user(sandbox_id, user_id)
        if found is None:
            raise SandboxNotFound("No such sandbox.", sandboxId=sandbox_id)
        return status_of(found, self.links, usage=await self.usage(user_id))

    async def state(self, sandbox_id: str, user_id: str | None) -> PreviewStatus:
        """The status without usage: one row read (event streams re-check it while they wait)."""
        return status_of(await owned_row(self.repo, sandbox_id, user_id), self.links)

    def follow_events(
        self, sandbox_id: str, *, after: str, block_ms: int | None
    ) -> AsyncIterator[Event | None]:
        """The sandbox's events after `after`, then new ones as they come (`None` when a wait
        timed out); ends after a terminal status. Callers check ownership first."""
        return self.events.follow(sandbox_id, after=after, block_ms=block_ms)

    async def usage(self, user_id: str, used: int | None = None) -> Usage:
        """The user's preview time today (`used` when the caller already knows it)."""
        return await self.heartbeats.usage(user_id, used)

    async def fresh_open_url(self, sandbox_id: str, ttl_seconds: int) -> str:
        """A newly signed, short-lived browser link to a running sandbox (review links)."""
        row = await owned_row(self.repo, sandbox_id, None)
        if row.status != SandboxStatus.RUNNING or not row.preview_token:
            raise SandboxNotRunning("This preview is not running.", sandboxId=sandbox_id)
        until = self.clock.now() + timedelta(seconds=ttl_seconds)
        return self.links.open_url(row.id, row.port, row.preview_token, until)

    # --- what the preview gateway asks --------------------------------------------------------

    async def host_view(self, sandbox_id: str) -> HostView | None:
        """What the gateway needs of a sandbox (one row read), or None when there is none."""
        row = await self.repo.get(sandbox_id)
        return host_view_of(row) if row is not None else None

    async def upstream(self, view: HostView) -> Upstream:
        """Where a running sandbox's server is: as stored with its row, else (a row that reached
        `running` before upstreams were stored) asked of the provider once per replica."""
        if view.upstream is not None:
            return view.upstream
        found = self._upstreams.get(view.sandbox_id)
        if found is None:
            if view.provider_id is None:
                raise ProviderError("the sandbox has no provider sandbox")
            handle = self.provider.attach(view.provider_id, view.sandbox_id)
            found = await self.provider.upstream(handle, view.port)
            if len(self._upstreams) >= 1024:
                self._upstreams.clear()
            self._upstreams[view.sandbox_id] = found
        return found

    # --- heartbeat and stop -----------------------------------------------------------------

    async def heartbeat(self, sandbox_id: str, user_id: str, visible: bool) -> HeartbeatOut:
        """Record that someone is watching; charge the time since the last heartbeat."""
        return await self.heartbeats.heartbeat(sandbox_id, user_id, visible)

    async def flush_heartbeats(self) -> dict[str, int]:
        """Write the heartbeats queued in Redis behind to the rows and the usage ledger."""
        return await self.heartbeats.flush()

    async def stop(
        self, sandbox_id: str, *, reason: str = "user", user_id: str | None = None
    ) -> PreviewStatus:
        """Stop a sandbox (idempotent): its processes and files are gone when this returns."""
        return await self.stops.stop(sandbox_id, reason=reason, user_id=user_id)

    # --- what the reaper asks -----------------------------------------------------------------

    async def reap(
        self, row: Sandbox, reason: str, *, expect: dict[str, Any] | None = None
    ) -> bool:
        """Stop `row` if it is still as read (state and `expect`ed columns); False otherwise."""
        return await self.stops.reap(row, reason, expect=expect)

    async def reap_many(self, rows: Sequence[Sandbox], reason: str) -> list[Sandbox]:
        """Stop each of `rows` still as read (for `idle`: no heartbeat since), a batch at a time
        (`previews.reaping`): the rows this caller claimed."""
        return await self.reaping.reap(rows, reason)

    async def retry_stop(self, row: Sandbox) -> PreviewStatus:
        """Finish a stop whose provider delete failed (the row is still `stopping`)."""
        return await self.stops.finish(row)

    async def fail_lost_build(self, row: Sandbox) -> bool:
        """End a build whose replica stopped renewing its lease in `error` (lease_lost)."""
        return await self.stops.fail_lost_build(row)

    async def close_lost(self, row: Sandbox) -> bool:
        """Close a row whose provider sandbox is gone (`stopped`, reason lost)."""
        return await self.stops.close_row(row, reason="lost")

    async def end_over_limit(self, sandbox_id: str, code: str) -> None:
        """The provider ended a sandbox that went past a limit (`code`: sandbox_process_limit,
        sandbox_disk_limit): a running preview stops with that reason, freeing its slot. A build
        in progress fails by itself, with the same code, at its next step."""
        row = await self.repo.get(sandbox_id)
        if row is not None and row.status == SandboxStatus.RUNNING:
            await self.stops.stop(sandbox_id, reason=code)

    @property
    def keeps_idle_clock(self) -> bool:
        """Whether the provider stops idle sandboxes on its own (Daytona's auto-stop), so that
        watched ones need `keep_alive`; local sandboxes keep none."""
        return self.provider.name != "local"

    async def keep_alive(self, row: Sandbox) -> bool:
        """Reset the provider's own idle clock of a watched sandbox; False when nothing was done."""
        if row.provider_id is None:
            return False
        try:
            handle = self.provider.attach(row.provider_id, row.id)
            return await self.provider.keep_alive(handle)
        except ProviderError as exc:
            log.warning("sandbox.keep_alive_failed", sandbox_id=row.id, code=exc.code)
            return False

    async def drain_deletes(self) -> dict[str, int]:
        """Retry the provider deletes that failed before (until each sandbox is gone)."""
        return await self.deletes.drain()

    async def provider_sandboxes(self) -> list[ProviderSandboxInfo]:
        """Every sandbox the provider runs for this deployment."""
        return await self.provider.list_sandboxes(owned_selector(self.settings.preview_deployment))

    async def delete_orphan(self, info: ProviderSandboxInfo) -> bool:
        """Delete a provider sandbox no row accounts for; False when the delete failed."""
        return await self.stops.delete_provider_sandbox(info.provider_id, info.sandbox_id)

    # --- this process -------------------------------------------------------------------------

    async def close_leftovers(self) -> int:
        """At start with a process-bound provider (local): close the rows of an earlier process."""
        return await self.stops.close_leftovers()

    async def shutdown(self) -> None:
        """Cancel builds in flight (each cleans up after itself)."""
        await self.builds.shutdown()

    async def wait_idle(self) -> None:
        """Wait until no build runs in this process (tests and graceful shutdown)."""
        await self.builds.wait_idle()

    def builds_in_flight(self) -> list[str]:
        """Ids of the sandboxes being built in this process (their leases are alive)."""
        return self.builds.in_flight()
