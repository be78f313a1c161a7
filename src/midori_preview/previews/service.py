"""PreviewService: the sandbox lifecycle — create (quota → record → pipeline), status, heartbeat
(with usage charging) and stop. Owns the state machine; routes only call it."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Sequence
from datetime import timedelta
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from midori_preview.clock import Clock
from midori_preview.db.models import IdempotencyKey, Sandbox
from midori_preview.db.repo import LIVE, TERMINAL, Repository
from midori_preview.errors import (
    ConcurrencyLimit,
    DailyQuotaExhausted,
    DailyQuotaExhaustedGone,
    IdempotencyConflict,
    QuotaUnavailable,
    RateLimited,
    SandboxNotFound,
    SandboxNotRunning,
    SandboxStopped,
)
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.charging import Charger
from midori_preview.previews.pipeline import Pipeline, PipelineSettings
from midori_preview.previews.schemas import (
    Created,
    CreatePreview,
    HeartbeatOut,
    PreviewStatus,
    StepError,
    Usage,
)
from midori_preview.previews.sources import BuildPlan, digest_of, plan_for
from midori_preview.providers.base import (
    ProviderError,
    ProviderSandbox,
    SandboxProvider,
    SandboxSpec,
)
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from midori_preview.usage import day_of, next_midnight

log = get_logger(__name__)

# Stops that the watching user caused are charged up to the moment of the stop; stops by the
# service (idle, expired, quota, lost …) only up to the last heartbeat, which is already charged.
CHARGED_REASONS = frozenset({"user", "replaced"})


def new_sandbox_id() -> str:
    """16 lowercase base32 characters: DNS-label safe (preview hosts) and unguessable."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


class PreviewService:
    def __init__(
        self,
        *,
        settings: Settings,
        repo: Repository,
        quota: QuotaService,
        events: EventBus,
        provider: SandboxProvider,
        clock: Clock,
        replica_id: str,
        build_cache: BuildCache | None = None,
    ) -> None:
        self.settings = settings
        self.repo = repo
        self.quota = quota
        self.events = events
        self.provider = provider
        self.clock = clock
        self.replica_id = replica_id
        self.tz = ZoneInfo(settings.usage_timezone)
        self.slot_lease_seconds = (
            settings.idle_timeout_seconds + 2 * settings.reaper_interval_seconds + 60
        )
        self.pipeline = Pipeline(
            cache=build_cache,
            provider=provider,
            repo=repo,
            events=events,
            clock=clock,
            settings=PipelineSettings(
                create_timeout=settings.sandbox_create_timeout_seconds,
                upload_timeout=settings.upload_timeout_seconds,
                step_timeout=settings.build_step_timeout_seconds,
                start_timeout=settings.start_timeout_seconds,
                clone_timeout=settings.git_clone_timeout_seconds,
                lease_seconds=settings.build_lease_seconds,
                open_url_ttl_seconds=settings.open_url_ttl_seconds,
            ),
            replica_id=replica_id,
            on_finished=self._finished,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.charger = Charger(
            settings=settings,
            repo=repo,
            quota=quota,
            tz=self.tz,
            slot_lease_seconds=self.slot_lease_seconds,
        )

    # --- create ---------------------------------------------------------------------------

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
    ) -> tuple[int, Created]:
        """Admit a preview and start its build in the background: (HTTP status, answer).
        `extra_git_prefixes`: git URL prefixes this caller may clone from besides
        GIT_ALLOWED_URL_PREFIXES (the GitHub integration's own clone base)."""
        s = self.settings
        plan = plan_for(
            body,
            allowed_git_prefixes=[*s.git_allowed_url_prefixes, *extra_git_prefixes],
            max_files=s.max_files,
            max_bytes=s.max_request_bytes,
        )
        request_hash = digest_of(
            {"projectId": body.project_id, "replace": body.replace, "source": plan.digest}
        )
        limit = concurrency_limit or s.max_concurrent_sandboxes_per_user
        try:
            async with self.quota.user_lock(user_id):
                if idempotency_key:
                    existing = await self.repo.get_idempotency(user_id, idempotency_key)
                    if existing is not None:
                        if existing.request_hash != request_hash:
                            raise IdempotencyConflict(
                                "Idempotency-Key was already used with a different body."
                            )
                        row = await self.repo.get(existing.sandbox_id)
                        if row is not None:
                            return 202, self._created(row)
                live = await self.repo.live_same_source(user_id, body.project_id, plan.digest)
                if live is not None and not body.replace:
                    await self._remember_key(user_id, idempotency_key, request_hash, live.id)
                    return 200, self._created(live)
                wait = await self.quota.hit_rate_limit(user_id, per_minute=s.create_rate_per_minute)
                if wait:
                    raise RateLimited(
                        f"Too many previews started; try again in {wait} s.",
                        headers={"Retry-After": str(wait)},
                        retryAfterSeconds=wait,
                    )
                if check_daily_quota:
                    used = await self._used_today(user_id)
                    if used >= s.daily_usage_cap_seconds:
                        reset = next_midnight(self.clock.now(), self.tz)
                        raise DailyQuotaExhausted(
                            "Today's preview time is used up; it resets at midnight.",
                            resetAt=reset.isoformat(),
                        )
                sandbox_id = new_sandbox_id()
                await self._take_slot(user_id, sandbox_id, limit, replace=body.replace)
                row = self._new_row(user_id, sandbox_id, body, plan, kind, ttl_seconds)
                key = (
                    IdempotencyKey(
                        user_id=user_id,
                        key=idempotency_key,
                        request_hash=request_hash,
                        sandbox_id=sandbox_id,
                        created_at=row.created_at,
                    )
                    if idempotency_key
                    else None
                )
                try:
                    inserted = await self.repo.insert_sandbox(row, idempotency=key)
                except BaseException:
                    await self.quota.release_slot(user_id, sandbox_id)
                    raise
                if inserted is None:  # the key was taken meanwhile (only if the lock expired)
                    await self.quota.release_slot(user_id, sandbox_id)
                    raise IdempotencyConflict(
                        "A request with this Idempotency-Key is in progress; retry it."
                    )
        except RedisError as exc:
            raise QuotaUnavailable("Quota store unreachable; previews cannot start now.") from exc
        await self.events.publish(sandbox_id, "status", {"status": "requested"})
        log.info(
            "sandbox.requested", sandbox_id=sandbox_id, user_id=user_id, source=plan.source_kind
        )
        self._spawn(row, plan)
        return 202, self._created(row)

    async def _take_slot(self, user_id: str, sandbox_id: str, limit: int, *, replace: bool) -> None:
        lease = self.slot_lease_seconds
        for _ in range(3):
            slot = await self.quota.acquire_slot(
                user_id, sandbox_id, limit=limit, lease_seconds=lease
            )
            # Postgres is the truth: Redis may have lost slots (flush, failover) or kept some.
            live = await self.repo.live_for_user(user_id)
            live_ids = {r.id for r in live}
            if slot.granted:
                if len(live) < limit:
                    return
                # Redis forgot live sandboxes: put their slots back and refuse this one.
                await self.quota.release_slot(user_id, sandbox_id)
                await self.quota.renew_slots(user_id, live_ids, lease)
            else:
                stale = [h for h in slot.holders if h not in live_ids]
                for holder in stale:  # a release that never reached Redis: heal it here
                    await self.quota.release_slot(user_id, holder)
                if stale:
                    continue
            if replace and live:
                await self.stop(live[0].id, reason="replaced")
                continue
            raise ConcurrencyLimit(
                f"You already have {len(live)} preview(s) running (limit {limit}). Stop one, "
                'or send "replace": true to stop the oldest and start this one.',
                activeSandboxIds=[r.id for r in live],
                limit=limit,
            )
        raise ConcurrencyLimit("Could not get a preview slot; try again.", activeSandboxIds=[])

    def _new_row(
        self,
        user_id: str,
        sandbox_id: str,
        body: CreatePreview,
        plan: BuildPlan,
        kind: str,
        ttl_seconds: int | None,
    ) -> Sandbox:
        now = self.clock.now()
        ttl = ttl_seconds or self.settings.max_sandbox_ttl_seconds
        return Sandbox(
            id=sandbox_id,
            user_id=user_id,
            project_id=body.project_id,
            kind=kind,
            provider=self.provider.name,
            source_kind=plan.source_kind,
            source_digest=plan.digest,
            template=plan.template,
            status="requested",
            port=plan.port,
            commands_run=0,
            visible=True,
            active=True,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=ttl),
            lease_owner=self.replica_id,
            lease_expires_at=now + timedelta(seconds=self.settings.build_lease_seconds),
        )

    async def _remember_key(
        self, user_id: str, key: str | None, request_hash: str, sandbox_id: str
    ) -> None:
        if not key:
            return
        await self.repo.insert_sandbox_key(
            IdempotencyKey(
                user_id=user_id,
                key=key,
                request_hash=request_hash,
                sandbox_id=sandbox_id,
                created_at=self.clock.now(),
            )
        )

    def _spawn(self, row: Sandbox, plan: BuildPlan) -> None:
        spec = SandboxSpec(
            sandbox_id=row.id,
            user_id=row.user_id,
            project_id=row.project_id,
            labels={
                "midori-preview": "1",
                "midori-preview/deployment": self.settings.preview_deployment,
                "midori-preview/sandbox-id": row.id,
                "midori-preview/user-id": row.user_id,
                "midori-preview/project-id": row.project_id,
            },
        )
        task = asyncio.create_task(self.pipeline.run(row.id, spec, plan), name=f"build:{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))

    async def _finished(self, sandbox_id: str, status: str, reason: str | None) -> None:
        row = await self.repo.get(sandbox_id)
        if row is not None:
            await self._release(row.user_id, sandbox_id)

    async def _release(self, owner: str, sandbox_id: str) -> None:
        try:
            await self.quota.release_slot(owner, sandbox_id)
        except RedisError:
            log.warning("quota.release_failed", sandbox_id=sandbox_id)  # sync heals it

    # --- read -----------------------------------------------------------------------------

    async def _owned(self, sandbox_id: str, user_id: str | None) -> Sandbox:
        row = (
            await self.repo.get(sandbox_id)
            if user_id is None
            else await self.repo.get_for_user(sandbox_id, user_id)
        )
        if row is None:
            raise SandboxNotFound("No such sandbox.", sandboxId=sandbox_id)
        return row

    async def status(self, sandbox_id: str, user_id: str | None) -> PreviewStatus:
        row = await self._owned(sandbox_id, user_id)
        return self.view(row, usage=await self.usage(row.user_id))

    async def state(self, sandbox_id: str, user_id: str | None) -> PreviewStatus:
        """The status without usage: one row read (event streams re-check it while they wait)."""
        return self.view(await self._owned(sandbox_id, user_id))

    def view(self, row: Sandbox, usage: Usage | None = None) -> PreviewStatus:
        running = row.status == "running"
        return PreviewStatus(
            sandbox_id=row.id,
            project_id=row.project_id,
            status=row.status,  # type: ignore[arg-type]
            reason=row.reason,
            preview_url=row.preview_url if running else None,
            preview_token=row.preview_token if running else None,
            open_url=row.open_url if running else None,
            created_at=row.created_at,
            ready_at=row.ready_at,
            last_heartbeat_at=row.last_heartbeat_at,
            expires_at=row.expires_at,
            error=StepError(
                step=row.error_step,
                code=row.error_code or "step_failed",
                message=row.error_message or "",
                exit_code=row.error_exit_code,
            )
            if row.error_step
            else None,
            logs_tail=list(row.logs_tail or []),
            usage=usage,
        )

    def _created(self, row: Sandbox) -> Created:
        return Created(
            sandbox_id=row.id,
            project_id=row.project_id,
            status=row.status,  # type: ignore[arg-type]
            status_url=f"/api/preview/daytona/status?sandboxId={row.id}",
            events_url=f"/api/preview/daytona/events?sandboxId={row.id}",
            heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
        )

    # --- usage ----------------------------------------------------------------------------

    async def _used_today(self, user_id: str) -> int:
        return await self.charger.used_on(user_id, day_of(self.clock.now(), self.tz))

    async def usage(self, user_id: str, used: int | None = None) -> Usage:
        """The user's preview time today (`used` when the caller already knows it)."""
        now = self.clock.now()
        if used is None:
            used = await self._used_today(user_id)
        cap = self.settings.daily_usage_cap_seconds
        remaining = max(cap - used, 0)
        return Usage(
            used_seconds_today=used,
            remaining_seconds_today=remaining,
            warning="quota_low" if remaining <= self.settings.usage_warning_seconds else None,
            day=day_of(now, self.tz),
            reset_at=next_midnight(now, self.tz),
        )

    # --- heartbeat ------------------------------------------------------------------------

    async def heartbeat(self, sandbox_id: str, user_id: str, visible: bool) -> HeartbeatOut:
        """Record that someone is watching; charge the time since the last heartbeat.

        The hot path: one row read, one Redis script (slot renewal + the charge reserved against
        the day's cap) and one transaction (compare-and-set on the row + ledger upsert)."""
        row = await self._owned(sandbox_id, user_id)
        now = self.clock.now()
        if row.status in TERMINAL or row.status == "stopping":
            self._raise_stopped(row)
        interval = self.settings.heartbeat_interval_seconds
        if row.status != "running":
            await self.repo.touch_heartbeat(sandbox_id, now, visible)
            return HeartbeatOut(
                sandbox_id=row.id,
                status=row.status,  # type: ignore[arg-type]
                next_heartbeat_seconds=interval,
            )
        charge = await self.charger.plan(row, now, renew_slot=True)
        changed = (
            charge.seconds > 0
            or charge.charged_until != row.charged_until
            or visible != row.visible
            or row.last_heartbeat_at is None
            or (now - row.last_heartbeat_at).total_seconds() >= 1
        )
        total, exhausted = charge.total_today, charge.exhausted
        if changed:  # a duplicate within the same second writes nothing
            try:
                charged = await self.repo.charge(
                    sandbox_id,
                    expected_charged_until=row.charged_until,
                    charged_until=charge.charged_until,
                    now=now,
                    visible=visible,
                    entries=charge.entries,
                )
            except BaseException:
                await self.charger.refund(row.user_id, charge)
                raise
            if not charged:  # a concurrent heartbeat charged this time already
                await self.charger.refund(row.user_id, charge)
                today = day_of(now, self.tz)
                total -= sum(sec for day, sec in charge.reserved if day == today)
                exhausted = total >= self.settings.daily_usage_cap_seconds
        log.debug("heartbeat", sandbox_id=sandbox_id, charged=charge.seconds, visible=visible)
        if exhausted:
            await self.stop(sandbox_id, reason="quota")
            self._raise_stopped(await self._owned(sandbox_id, None))
        return HeartbeatOut(
            sandbox_id=row.id,
            status="running",
            next_heartbeat_seconds=interval,
            usage=await self.usage(row.user_id, used=total),
        )

    def _raise_stopped(self, row: Sandbox) -> None:
        if row.reason == "quota":
            reset = next_midnight(self.clock.now(), self.tz)
            raise DailyQuotaExhaustedGone(
                "Today's preview time is used up; the preview was stopped.",
                sandboxId=row.id,
                reason=row.reason,
                resetAt=reset.isoformat(),
            )
        raise SandboxStopped(
            "This preview is no longer running.", sandboxId=row.id, reason=row.reason
        )

    # --- stop -----------------------------------------------------------------------------

    async def stop(
        self, sandbox_id: str, *, reason: str = "user", user_id: str | None = None
    ) -> PreviewStatus:
        """Stop a sandbox (idempotent): its processes and files are gone when this returns."""
        row = await self._owned(sandbox_id, user_id)
        if row.status in TERMINAL:
            return self.view(row)
        now = self.clock.now()
        if row.status != "stopping":
            charge = (
                await self.charger.plan(row, now, renew_slot=False)
                if row.status == "running" and reason in CHARGED_REASONS
                else None
            )
            moved = await self.repo.stop_and_charge(
                sandbox_id,
                from_status=(row.status,),
                to_status="stopping",
                now=now,
                expected_charged_until=row.charged_until,
                charged_until=charge.charged_until if charge else None,
                entries=charge.entries if charge else [],
                reason=reason,
                stopped_at=now,
            )
            if not moved:  # raced with a transition or another stop: look again
                if charge:
                    await self.charger.refund(row.user_id, charge)
                return await self.stop(sandbox_id, reason=reason, user_id=user_id)
            await self.events.publish(
                sandbox_id, "status", {"status": "stopping", "reason": reason}
            )
            row = await self._owned(sandbox_id, None)
        task = self._tasks.get(sandbox_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return await self._finish_stop(row)

    async def _finish_stop(self, row: Sandbox) -> PreviewStatus:
        if row.provider_id:
            handle = ProviderSandbox(self.provider.name, row.provider_id, row.id, "")
            try:
                await self.provider.delete(handle)
            except ProviderError as exc:
                log.warning("sandbox.delete_failed", sandbox_id=row.id, code=exc.code)
                return self.view(row)  # stays `stopping`; the reaper retries the delete
            log.info("sandbox.deleted", sandbox_id=row.id, reason=row.reason)
        await self.repo.transition(
            row.id,
            from_status=("stopping",),
            to_status="stopped",
            now=self.clock.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        await self._release(row.user_id, row.id)
        await self.events.publish(row.id, "status", {"status": "stopped", "reason": row.reason})
        return self.view(await self._owned(row.id, None))

    async def close_row(self, row: Sandbox, *, status: str, reason: str) -> bool:
        """Close a row without a provider call (its provider sandbox is already gone)."""
        moved = await self.repo.transition(
            row.id,
            from_status=(*LIVE, "stopping"),
            to_status=status,
            now=self.clock.now(),
            reason=reason,
            stopped_at=self.clock.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        if moved:
            await self._release(row.user_id, row.id)
            await self.events.publish(row.id, "status", {"status": status, "reason": reason})
        return moved

    async def close_leftovers(self) -> int:
        """At start with a process-bound provider (local): sandboxes of an earlier process died
        with it, so their rows are closed now — not left `running` (and billed) until a sync."""
        closed = 0
        for row in await self.repo.live_rows():
            if row.provider == self.provider.name and await self.close_row(
                row, status="stopped", reason="lost"
            ):
                closed += 1
                log.warning("sandbox.lost_on_restart", sandbox_id=row.id, status=row.status)
        return closed

    async def shutdown(self) -> None:
        """Cancel builds in flight (each cleans up after itself)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Wait until no build runs in this process (tests and graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def builds_in_flight(self) -> list[str]:
        return list(self._tasks)

    async def fresh_open_url(self, sandbox_id: str, ttl_seconds: int) -> str:
        """A newly signed, short-lived browser link to a running sandbox (review links)."""
        row = await self._owned(sandbox_id, None)
        if row.status != "running" or not row.provider_id:
            raise SandboxNotRunning("This preview is not running.", sandboxId=sandbox_id)
        handle = ProviderSandbox(self.provider.name, row.provider_id, row.id, "")
        link = await self.provider.preview_link(handle, row.port, open_url_ttl_seconds=ttl_seconds)
        return link.open_url
