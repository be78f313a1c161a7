"""Live updates: a running preview takes a new source in place (`PUT …/{id}/source`), in the
same sandbox, and its version grows.

- promptJson, `static`: the changed rendered files are uploaded; `vite`: the new prompt.json
  (the built page fetches it at run time). `files`: the changed files are uploaded and the
  deleted ones removed; with a build step, the install (when dependencies changed) and the build
  run in a staging copy of the workspace while the previous version keeps being served, and
  only a successful build is copied over it. A failed one changes nothing (`rebuild_failed`).
- One update of a sandbox at a time (a Redis lock, across replicas). Each request takes a ticket
  first; an update whose ticket is no longer the newest when its turn comes is superseded: it
  waits for the newest to finish and answers with the version that won.
- An update of a preview still building waits until it runs; an identical source is a no-op.
- Updates have their own rate limit; they take no slot, no create rate, no idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from redis.exceptions import LockError, RedisError

from midori_preview.clock import Clock
from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.sources import SourceRepository
from midori_preview.errors import (
    QuotaUnavailable,
    RateLimited,
    RebuildFailed,
    SandboxStopped,
    UpdateFailed,
)
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.previews.schemas import SourceUpdated, UpdateSource
from midori_preview.previews.sources import BuildPlan
from midori_preview.previews.states import BUILDING, SandboxStatus
from midori_preview.previews.update_plans import (
    Manifest,
    UpdatePlan,
    fallback_manifest,
    manifest_of,
    plan_update,
)
from midori_preview.previews.views import owned_row
from midori_preview.providers.base import (
    CommandTimeout,
    FileData,
    ProviderError,
    ProviderSandbox,
    SandboxProvider,
)
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings

log = get_logger(__name__)

S = SandboxStatus
STAGING = ".midori-next"  # the staging copy of the workspace (inside it: the only writable place)
TAIL = 20
POLL = 0.05  # how often a waiting update re-reads the row or the newest ticket
LOCK_TTL = 30  # seconds; renewed every third of it while an update runs


class SourceUpdates:
    def __init__(
        self,
        *,
        settings: Settings,
        sandboxes: SandboxRepository,
        sources: SourceRepository,
        provider: SandboxProvider,
        events: EventBus,
        quota: QuotaService,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.sources = sources
        self.provider = provider
        self.events = events
        self.quota = quota
        self.redis = quota.redis
        self.prefix = quota.prefix
        self.clock = clock

    async def record(self, sandbox_id: str, plan: BuildPlan) -> None:
        """Remember what a new sandbox serves (best effort: without it, the first update
        uploads every file)."""
        m = manifest_of(plan)
        try:
            await self.sources.record(sandbox_id, m.spec, m.files, self.clock.now())
        except Exception:  # never fail a create for this
            log.warning("sandbox.source_not_recorded", sandbox_id=sandbox_id)

    async def update(self, sandbox_id: str, user_id: str, body: UpdateSource) -> SourceUpdated:
        """Apply `body` to the caller's running preview (see the module's docstring)."""
        row = await owned_row(self.sandboxes, sandbox_id, user_id)
        _alive(row)
        current = await self._manifest(row)
        planned = self._plan(body, current)  # a bad or incompatible body fails first
        await self._rate_limit(user_id)
        try:
            ticket = await self._ticket(sandbox_id)
            async with self._lock(sandbox_id):
                row = await self._until_running(sandbox_id, user_id)
                newest = int(await self.redis.get(self.key(sandbox_id, "seq")) or 0)
                if newest <= ticket:
                    try:
                        now = await self._manifest(row)  # an earlier update may have changed it
                        plan = planned if now == current else self._plan(body, now)
                        return await self._apply(row, plan)
                    finally:
                        await self.redis.set(self.key(sandbox_id, "done"), ticket, ex=86400)
            return await self._superseded(sandbox_id, user_id, newest)
        except RedisError as exc:
            raise QuotaUnavailable("Quota store unreachable; try the update again.") from exc

    # --- steps ------------------------------------------------------------------------------

    def _plan(self, body: UpdateSource, current: Manifest) -> UpdatePlan:
        s = self.settings
        return plan_update(body, current, max_files=s.max_files, max_bytes=s.max_request_bytes)

    async def _manifest(self, row: Sandbox) -> Manifest:
        found = await self.sources.get(row.id)
        if found is None:
            return fallback_manifest(row.source_kind, row.template, row.port)
        return Manifest(dict(found.spec), dict(found.files))

    async def _rate_limit(self, user_id: str) -> None:
        per_minute = self.settings.update_rate_per_minute
        try:
            wait = await self.quota.hit_rate_limit(user_id, per_minute=per_minute, bucket="upd")
        except RedisError as exc:
            raise QuotaUnavailable("Quota store unreachable; try the update again.") from exc
        if wait:
            raise RateLimited(
                f"Too many updates; try again in {wait} s.",
                headers={"Retry-After": str(wait)},
                retryAfterSeconds=wait,
            )

    async def _ticket(self, sandbox_id: str) -> int:
        """This request's place among the updates of `sandbox_id` (the newest one wins)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.incr(self.key(sandbox_id, "seq"))
            pipe.expire(self.key(sandbox_id, "seq"), 86400)
            ticket, _ = await pipe.execute()
        return int(ticket)

    def key(self, sandbox_id: str, what: str) -> str:
        return f"{self.prefix}:update:{sandbox_id}:{what}"

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """One update of `sandbox_id` at a time, across replicas. The lock lives LOCK_TTL
        seconds and is renewed while its update runs: a replica that dies frees it soon."""
        s = self.settings
        longest = 2 * s.build_step_timeout_seconds + 2 * s.upload_timeout_seconds + 120
        lock = self.redis.lock(
            self.key(sandbox_id, "lock"),
            timeout=LOCK_TTL,
            blocking_timeout=longest + s.update_wait_seconds,
            sleep=0.01,
        )
        if not await lock.acquire():
            raise QuotaUnavailable("Too many updates of this preview at once; try again.")
        renewer = asyncio.create_task(_renew(lock))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(LockError, RedisError):
                await lock.release()

    async def _until_running(self, sandbox_id: str, user_id: str) -> Sandbox:
        """The row once it runs (a preview still building is waited for); 410 once it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.update_wait_seconds
        while True:
            row = await owned_row(self.sandboxes, sandbox_id, user_id)
            _alive(row)
            if row.status == S.RUNNING:
                return row
            if loop.time() > deadline:
                raise SandboxStopped(
                    "This preview did not start in time; the update was not applied.",
                    sandboxId=sandbox_id,
                    reason=row.reason,
                )
            await asyncio.sleep(POLL)

    async def _superseded(self, sandbox_id: str, user_id: str, newest: int) -> SourceUpdated:
        """A newer update came meanwhile: wait until it is done, answer with what won."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.update_wait_seconds + 60
        while int(await self.redis.get(self.key(sandbox_id, "done")) or 0) < newest:
            if loop.time() > deadline:
                break
            await asyncio.sleep(POLL)
        row = await owned_row(self.sandboxes, sandbox_id, user_id)
        return SourceUpdated(
            sandbox_id=row.id,
            version=row.version,
            updated_at=row.source_updated_at,
            changed=False,
            superseded=True,
        )

    async def _apply(self, row: Sandbox, plan: UpdatePlan) -> SourceUpdated:
        if plan.noop:
            return SourceUpdated(
                sandbox_id=row.id,
                version=row.version,
                updated_at=row.source_updated_at,
                changed=False,
            )
        assert row.provider_id is not None, "a running sandbox has its provider sandbox"
        handle = self.provider.attach(row.provider_id, row.id)
        try:
            if plan.build:
                await self._rebuild(row, handle, plan)
            else:
                await self._write(handle, plan.uploads, plan.deletions, prefix="")
        except (ProviderError, TimeoutError, RebuildFailed) as exc:
            await self._gone_meanwhile(row)  # stopped while it was being updated: a 410
            if isinstance(exc, RebuildFailed):
                raise
            code = exc.code if isinstance(exc, ProviderError) else "provider_timeout"
            raise UpdateFailed(
                "The sandbox did not take the update; try again.", providerCode=code
            ) from None
        now = self.clock.now()
        m = plan.manifest
        moved = await self.sources.bump(
            row.id, version=row.version, digest=plan.digest, spec=m.spec, files=m.files, now=now
        )
        if not moved:
            raise SandboxStopped(
                "This preview stopped during the update.",
                sandboxId=row.id,
                reason=SandboxStatus.STOPPED,
            )
        version = row.version + 1
        await self._announce(row.id, version, now, plan)
        log.info("sandbox.updated", sandbox_id=row.id, version=version, files=len(plan.uploads))
        return SourceUpdated(
            sandbox_id=row.id,
            version=version,
            updated_at=now,
            changed=True,
            uploaded=[f.path for f in plan.uploads],
            deleted=plan.deletions,
            rebuilt=bool(plan.build),
        )

    async def _gone_meanwhile(self, row: Sandbox) -> None:
        fresh = await self.sandboxes.get(row.id)
        if fresh is None or fresh.status != S.RUNNING:
            raise SandboxStopped(
                "This preview stopped during the update.",
                sandboxId=row.id,
                reason=fresh.reason if fresh else None,
            )

    async def _announce(
        self, sandbox_id: str, version: int, now: datetime, plan: UpdatePlan
    ) -> None:
        await self.events.publish(
            sandbox_id,
            "updated",
            {"version": version, "updatedAt": now.isoformat(), "files": len(plan.uploads),
             "deleted": len(plan.deletions), "rebuilt": bool(plan.build)},
        )  # fmt: skip

    async def _write(
        self, handle: ProviderSandbox, uploads: list[FileData], deletions: list[str], *, prefix: str
    ) -> None:
        """Upload `uploads` and remove `deletions` (under `prefix` of the workdir)."""
        if uploads:
            files = [FileData(prefix + f.path, f.content) for f in uploads]
            async with asyncio.timeout(self.settings.upload_timeout_seconds):
                await self.provider.upload(handle, files)
        if deletions:
            paths = " ".join(shlex.quote(prefix + p) for p in deletions)
            await self._run(handle, f"rm -f -- {paths}", step="update", timeout=60)

    async def _rebuild(self, row: Sandbox, handle: ProviderSandbox, plan: UpdatePlan) -> None:
        """Install and build in a staging copy; only a successful build replaces the served
        workspace. RebuildFailed (the previous version still live) otherwise."""
        stage = shlex.quote(STAGING)
        tail: deque[str] = deque(maxlen=TAIL)
        await self._run(handle, _copy_in(plan.install is not None), step="update", timeout=300)
        try:
            await self._write(handle, plan.uploads, plan.deletions, prefix=f"{STAGING}/")
            for step, command in (("install", plan.install), ("build", plan.build)):
                if command:
                    await self._step(row.id, handle, step, f"cd {stage} && {command}", tail)
            await self._run(handle, COPY_OUT, step="update", timeout=300)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._run(handle, f"rm -rf {stage}", step="update", timeout=60)
            raise
        if plan.deletions:
            await self._write(handle, [], plan.deletions, prefix="")

    async def _step(
        self, sandbox_id: str, handle: ProviderSandbox, step: str, command: str, tail: deque[str]
    ) -> None:
        timeout = self.settings.build_step_timeout_seconds
        on_output = self._output(sandbox_id, step, tail)
        try:
            result = await self.provider.exec(
                handle, command, timeout=timeout, env={"PORT": "0"}, on_output=on_output
            )
        except CommandTimeout:
            await self._failed(sandbox_id, step, "step_timeout", None)
            raise RebuildFailed(
                f"the {step} timed out after {timeout}s; the previous version is still live",
                step=step, stepCode="step_timeout", exitCode=None, logsTail=list(tail),
            ) from None  # fmt: skip
        if result.exit_code != 0:
            await self._failed(sandbox_id, step, "step_failed", result.exit_code)
            raise RebuildFailed(
                f"the {step} failed; the previous version is still live",
                step=step, stepCode="step_failed", exitCode=result.exit_code,
                logsTail=list(tail),
            )  # fmt: skip

    async def _failed(self, sandbox_id: str, step: str, code: str, exit_code: int | None) -> None:
        data = {"step": step, "code": code, "exitCode": exit_code}
        await self.events.publish(sandbox_id, "update_failed", data)
        log.info("sandbox.update_failed", sandbox_id=sandbox_id, step=step, exit_code=exit_code)

    def _output(
        self, sandbox_id: str, step: str, tail: deque[str]
    ) -> Callable[[str, str], Awaitable[None]]:
        async def on_line(line: str, stream: str) -> None:
            tail.append(line)
            await self.events.publish(
                sandbox_id, "log", {"step": f"update:{step}", "stream": stream, "line": line}
            )

        return on_line

    async def _run(
        self, handle: ProviderSandbox, command: str, *, step: str, timeout: float
    ) -> None:
        """One housekeeping command of the update (copies, removals); it must succeed."""
        result = await self.provider.exec(handle, command, timeout=timeout)
        if result.exit_code != 0:
            log.warning("sandbox.update_step_failed", step=step, exit_code=result.exit_code)
            raise RebuildFailed(
                "the update could not be applied; the previous version is still live",
                step=step, stepCode="step_failed", exitCode=result.exit_code, logsTail=[],
            )  # fmt: skip


# Staging copies everything but the dependencies: without a new install, the staging copy links
# to the served `node_modules` (copying it twice would cost seconds); with one, it gets its own,
# which then replaces the served one.
_S = shlex.quote(STAGING)
COPY_OUT = (
    f"if [ -L {_S}/node_modules ]; then rm {_S}/node_modules; "
    f"elif [ -d {_S}/node_modules ]; then rm -rf node_modules; fi && "
    f"tar -cf - -C {_S} . | tar -xf - && rm -rf {_S}"
)


def _copy_in(install: bool) -> str:
    copy = (
        f"rm -rf {_S} && mkdir {_S} && "
        f"tar -cf - --exclude=./{STAGING} --exclude=./node_modules . | tar -xf - -C {_S}"
    )
    if install:
        return copy
    return f"{copy} && if [ -d node_modules ]; then ln -s ../node_modules {_S}/node_modules; fi"


async def _renew(lock: Any) -> None:
    """Keep `lock` alive while its holder works (until cancelled, or the lock is lost)."""
    while True:
        await asyncio.sleep(LOCK_TTL / 3)
        try:
            await lock.reacquire()
        except (LockError, RedisError):
            log.warning("sandbox.update_lock_lost")
            return


def _alive(row: Sandbox) -> None:
    """410 for a preview that stopped (or is stopping): an update needs a new preview then."""
    if row.status != S.RUNNING and row.status not in BUILDING:
        raise SandboxStopped(
            "This preview is no longer running; start a new one.",
            sandboxId=row.id,
            reason=row.reason,
        )
