"""The build pipeline: create → upload (or clone) → install → build → start → probe → running.

Every step has its own timeout, streams its output as `log` events and moves the row through
`Transitions` (a compare-and-set); when a move fails, someone stopped the sandbox meanwhile and
the pipeline only cleans up what it made. A failed step ends in `error` with step, exit code and
log tail, and the provider sandbox is deleted; `failure_of` is the one mapping from an error to
that row."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from midori_preview.clock import Clock
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.errors import ServiceError, ValidationFailed
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_ready
from midori_preview.previews import build_cache
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.deletes import Deletes
from midori_preview.previews.sources import DETECT, BuildPlan, detected_commands
from midori_preview.previews.states import BUILDING, SandboxStatus
from midori_preview.previews.transitions import Transitions
from midori_preview.providers.base import (
    CommandTimeout,
    FileData,
    ProviderError,
    ProviderQuota,
    ProviderRejected,
    ProviderSandbox,
    SandboxProvider,
    SandboxSpec,
)
from midori_preview.providers.files import UnsafeArchive, read_archive
from midori_preview.templates import PROMPT_FILE

log = get_logger(__name__)

TAIL = 50


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    create_timeout: float
    upload_timeout: float
    step_timeout: float
    start_timeout: float
    clone_timeout: float
    lease_seconds: int
    probe_interval: float  # the provider's own (SandboxProvider.probe_interval)


S = SandboxStatus


@dataclass
class _Build:
    """One build in flight: where it is, what it made, what it printed."""

    sandbox_id: str
    plan: BuildPlan
    status: SandboxStatus = S.REQUESTED
    step: str = "create"
    commands: int = 0
    handle: ProviderSandbox | None = None
    unsettled: bool = False  # a create call in flight: it may leave a sandbox we never saw
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL))
    started: float = 0.0  # the clock's monotonic time when the build began

    @property
    def sandbox(self) -> ProviderSandbox:
        assert self.handle is not None, "the sandbox is created first"
        return self.handle


@dataclass(frozen=True, slots=True)
class _Commands:
    install: str | None
    build: str | None
    start: str | None
    port: int


class StepFailed(ServiceError):
    """How a build ended in `error`: the step, our code, a message safe to show, the exit code.
    Kept on the sandbox's row (status answers it); never raised to an API caller."""

    code = "step_failed"

    def __init__(
        self, step: str, message: str, exit_code: int | None = None, code: str = "step_failed"
    ) -> None:
        super().__init__(message)
        self.step = step
        self.exit_code = exit_code
        self.code = code


def failure_of(exc: Exception, step: str) -> StepFailed:
    """What a failure during `step` is recorded as: the one mapping from errors to error rows."""
    if isinstance(exc, StepFailed):
        return exc
    if isinstance(exc, ValidationFailed):  # the repository's own preview.json is unusable
        return StepFailed("detect", exc.message, code="invalid_preview_json")
    if isinstance(exc, ProviderError):  # our code (never vendor text); exit code if it has one
        return StepFailed(step, exc.message, exc.exit_code, exc.code)
    return StepFailed(step, "internal error", code="internal_error")


class Superseded(Exception):
    """The row left the state this pipeline expected: it was stopped (or reaped) meanwhile."""


async def to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run `cleanup` to its end even when the build is cancelled meanwhile (a stop cancels it,
    and may do so while the build is already cleaning up): a delete cut short would leave the
    sandbox's processes or files behind. The cancellation is passed on afterwards."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


class Pipeline:
    def __init__(
        self,
        *,
        cache: BuildCache | None = None,
        provider: SandboxProvider,
        sandboxes: SandboxRepository,
        transitions: Transitions,
        events: EventBus,
        clock: Clock,
        settings: PipelineSettings,
        replica_id: str,
        on_failed: Callable[[str], Awaitable[None]],
        deletes: Deletes,
    ) -> None:
        self.deletes = deletes  # deletes that fail are handed to the reaper
        self.cache = cache
        self.provider = provider
        self.sandboxes = sandboxes
        self.transitions = transitions
        self.events = events
        self.clock = clock
        self.settings = settings
        self.replica_id = replica_id
        self.on_failed = on_failed  # (sandbox id) → free what the row held (its slot)

    async def run(self, sandbox_id: str, spec: SandboxSpec, plan: BuildPlan) -> None:
        """Build the sandbox to `running`, or end it in `error` with nothing left behind."""
        b = _Build(sandbox_id, plan, started=self.clock.monotonic())
        renewer = asyncio.create_task(self._renew_lease(sandbox_id))
        try:
            await self._steps(b, spec)
        except Superseded:
            log.info("sandbox.build_superseded", sandbox_id=sandbox_id, step=b.step)
            await to_the_end(self._delete(b))
        except asyncio.CancelledError:
            await to_the_end(self._fail(b, StepFailed("shutdown", "cancelled", code="shutdown")))
            raise
        except Exception as exc:
            failed = failure_of(exc, b.step)
            if failed.code == "internal_error":  # none of ours: a bug, with its traceback
                log.exception("sandbox.build_crashed", sandbox_id=sandbox_id, step=b.step)
            await to_the_end(self._fail(b, failed))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _steps(self, b: _Build, spec: SandboxSpec) -> None:
        await self._advance(b, S.CREATING)
        b.unsettled = True
        try:
            async with asyncio.timeout(self.settings.create_timeout):
                b.handle = await self.provider.create(spec, timeout=self.settings.create_timeout)
            b.unsettled = False
        except TimeoutError:  # cut short: the provider may have made a sandbox we never saw
            b.unsettled = False
            await self.deletes.later(b.sandbox_id, None, reason="create_timeout")
            raise StepFailed(
                b.step, "sandbox creation timed out", code="provider_timeout"
            ) from None
        except ProviderError as exc:  # what it made and could not delete: the reaper's now
            b.unsettled = False
            for provider_id in exc.leftovers:
                await self.deletes.later(b.sandbox_id, provider_id, reason="create_failed")
            if not isinstance(exc, ProviderRejected | ProviderQuota) and not exc.leftovers:
                # Not a refusal: it may have been made and then failed, and the provider looks
                # for it by a listing, which may lag — the reaper looks again once it caught up.
                await self.deletes.later(b.sandbox_id, None, reason="create_failed")
            raise
        b.step = "upload"
        await self._advance(b, S.UPLOADING, provider_id=b.sandbox.provider_id)
        cmds, cached = await self._source(b)
        if cmds.install:
            b.step = "install"
            await self._advance(b, S.INSTALLING)
            await self._command(b, b.step, cmds.install, self.settings.step_timeout)
        if cmds.build:
            b.step = "build"
            await self._advance(b, S.BUILDING)
            await self._command(b, b.step, cmds.build, self.settings.step_timeout)
            if self.cache is not None and b.plan.cache_key and not cached:
                await self._keep_build(b.sandbox, b.plan, self.cache)
        b.step = "start"
        port = cmds.port
        await self._advance(b, S.STARTING, port=port)
        b.commands += 1
        await self.provider.start_server(
            b.sandbox, cmds.start or "", port=port, env={"PORT": str(port)},
            on_output=self._output(b, "start"),
        )  # fmt: skip
        await self._probe(b.sandbox, port)
        # Stored with the row: any replica's gateway serves the preview with no provider call.
        upstream = await self.provider.upstream(b.sandbox, port)
        now = self.clock.now()
        await self._advance(
            b, S.RUNNING, upstream_url=upstream.url, upstream_headers=dict(upstream.headers),
            ready_at=now, charged_until=now, last_heartbeat_at=now, lease_owner=None,
            lease_expires_at=None,
        )  # fmt: skip
        log.info("sandbox.running", sandbox_id=b.sandbox_id, port=port)
        record_ready(b.plan.template, self.provider.name, self.clock.monotonic() - b.started)

    async def _source(self, b: _Build) -> tuple[_Commands, bool]:
        """Put the project into the sandbox (clone, or one bulk upload — of a cached build when
        there is one): the commands left to run, and whether the cache served it."""
        plan = b.plan
        cmds = _Commands(plan.install, plan.build, plan.start, plan.port)
        if plan.git is not None:
            b.commands += 1
            creds = await plan.git.credentials() if plan.git.credentials is not None else None
            await self.provider.clone(
                b.sandbox,
                plan.git.url,
                plan.git.ref,
                timeout=self.settings.clone_timeout,
                credentials=creds,
            )
            if cmds.start is not None:
                return cmds, False
            found = await self._command(b, "detect", DETECT, self.settings.step_timeout)
            install, build, start, port = detected_commands(found)
            return _Commands(
                cmds.install or install, cmds.build or build, start, port or cmds.port
            ), False
        cached = self.cache.get(plan.cache_key) if self.cache and plan.cache_key else None
        files = plan.files
        if cached is not None:  # built before: its output + this request's data
            files = [FileData(f"{plan.output_dir}/{f.path}", f.content) for f in cached]
            files += plan.overlay
            cmds = _Commands(None, None, cmds.start, cmds.port)
            await self._output(b, "upload")(f"reusing the build of {plan.cache_key}", "stdout")
        async with asyncio.timeout(self.settings.upload_timeout):
            await self.provider.upload(b.sandbox, files)
        return cmds, cached is not None

    async def _advance(self, b: _Build, to: SandboxStatus, **fields: Any) -> None:
        """The next step's state, with the log tail so far; Superseded if the row moved."""
        moved = await self.transitions.move(
            b.sandbox_id, (b.status,), to, logs_tail=list(b.tail), commands_run=b.commands,
            **fields,
        )  # fmt: skip
        if not moved:
            raise Superseded
        b.status = to

    def _output(self, b: _Build, step: str) -> Callable[[str, str], Awaitable[None]]:
        async def on_line(line: str, stream: str) -> None:
            b.tail.append(line)
            await self.events.publish(
                b.sandbox_id, "log", {"step": step, "stream": stream, "line": line}
            )

        return on_line

    async def _command(self, b: _Build, step: str, cmd: str, timeout: float) -> list[str]:
        b.commands += 1
        try:
            result = await self.provider.exec(
                b.sandbox, cmd, timeout=timeout, env={"PORT": str(b.plan.port)},
                on_output=self._output(b, step),
            )  # fmt: skip
        except CommandTimeout:
            raise StepFailed(
                step, f"{step} timed out after {timeout:g}s", code="step_timeout"
            ) from None
        if result.exit_code != 0:
            raise StepFailed(step, f"{step} failed", result.exit_code)
        return list(result.output_tail)

    async def _keep_build(
        self, handle: ProviderSandbox, plan: BuildPlan, cache: BuildCache
    ) -> None:
        """Read the built output back (one command through the port) into the build cache. Best
        effort: a preview never fails because its output could not be cached."""
        assert plan.cache_key is not None
        try:
            files = await read_archive(
                self.provider,
                handle,
                plan.output_dir,
                exclude=(f"./{PROMPT_FILE}",),
                timeout=60,
                limits=build_cache.LIMITS,
            )
        except (ProviderError, UnsafeArchive) as exc:
            log.warning("build_cache.read_back_failed", key=plan.cache_key, error=str(exc)[:200])
            return
        await cache.store(plan.cache_key, files)

    async def _probe(self, handle: ProviderSandbox, port: int) -> None:
        # Real time on purpose: a server's start-up is wall-clock work, not service time.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.start_timeout
        while True:
            if await self.provider.probe(handle, port, timeout=2.0):
                return
            if loop.time() > deadline:
                raise StepFailed(
                    "start", f"server did not answer on port {port}", code="step_timeout"
                )
            await asyncio.sleep(self.settings.probe_interval)

    async def _renew_lease(self, sandbox_id: str) -> None:
        period = max(self.settings.lease_seconds / 3, 0.5)
        while True:
            await asyncio.sleep(period)
            until = self.clock.now() + timedelta(seconds=self.settings.lease_seconds)
            if not await self.sandboxes.renew_lease(sandbox_id, self.replica_id, until):
                return

    async def _delete(self, b: _Build) -> None:
        """Delete what the build made; what fails (or a create cut short) goes to the reaper."""
        if b.handle is not None:
            await self.deletes.delete(b.handle, reason=f"build:{b.step}")
        elif b.unsettled:  # cancelled mid-create
            b.unsettled = False
            await self.deletes.later(b.sandbox_id, None, reason="create_cancelled")

    async def _fail(self, b: _Build, failed: StepFailed) -> None:
        if b.status not in BUILDING:  # it reached `running`: no build is left to fail
            return
        await self._delete(b)
        step, message, exit_code, code = failed.step, failed.message, failed.exit_code, failed.code
        reason = f"error:{step}"
        now = self.clock.now()
        moved = await self.transitions.move(
            b.sandbox_id, (b.status,), S.ERROR, now=now,
            announce={"reason": reason, "step": step, "code": code, "message": message,
                      "exitCode": exit_code},
            reason=reason, error_step=step, error_message=message, error_code=code,
            error_exit_code=exit_code, logs_tail=list(b.tail), commands_run=b.commands,
            stopped_at=now, lease_owner=None, lease_expires_at=None,
        )  # fmt: skip
        if moved:
            log.warning(
                "sandbox.build_failed", sandbox_id=b.sandbox_id, step=step, exit_code=exit_code
            )
            await self.on_failed(b.sandbox_id)
