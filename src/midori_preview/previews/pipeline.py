"""The build pipeline: create → upload (or clone) → install → build → start → probe → running.

Every step has its own timeout, streams its output as `log` events and moves the row with a
compare-and-set; when a CAS fails, someone stopped the sandbox meanwhile and the pipeline only
cleans up what it made. A failed step ends in `error` with step, exit code and log tail, and the
provider sandbox is deleted."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import shlex
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from midori_preview.clock import Clock
from midori_preview.db.repo import Repository
from midori_preview.errors import ServiceError, ValidationFailed
from midori_preview.events import EventBus
from midori_preview.logging import get_logger
from midori_preview.previews.build_cache import BuildCache
from midori_preview.previews.sources import DETECT, BuildPlan, detected_commands
from midori_preview.providers.base import (
    CommandTimeout,
    FileData,
    ProviderError,
    ProviderSandbox,
    SandboxProvider,
    SandboxSpec,
)
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
    open_url_ttl_seconds: int
    probe_interval: float = 0.025  # a refused loopback connect costs ~0.1 ms


@dataclass
class _Progress:
    status: str = "requested"
    commands: int = 0


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


class Pipeline:
    def __init__(
        self,
        *,
        cache: BuildCache | None = None,
        provider: SandboxProvider,
        repo: Repository,
        events: EventBus,
        clock: Clock,
        settings: PipelineSettings,
        replica_id: str,
        on_finished: Callable[[str, str, str | None], Awaitable[None]],
    ) -> None:
        self.cache = cache
        self.provider = provider
        self.repo = repo
        self.events = events
        self.clock = clock
        self.settings = settings
        self.replica_id = replica_id
        self.on_finished = on_finished  # (sandbox id, final status, reason) → free slots etc.

    async def run(self, sandbox_id: str, spec: SandboxSpec, plan: BuildPlan) -> None:
        tail: deque[str] = deque(maxlen=TAIL)
        state = _Progress()
        handle: ProviderSandbox | None = None
        renewer = asyncio.create_task(self._renew_lease(sandbox_id))

        async def advance(to: str, **fields: Any) -> None:
            moved = await self.repo.transition(
                sandbox_id,
                from_status=(state.status,),
                to_status=to,
                now=self.clock.now(),
                logs_tail=list(tail),
                commands_run=state.commands,
                **fields,
            )
            if not moved:
                raise Superseded
            state.status = to
            await self.events.publish(sandbox_id, "status", {"status": to})

        def output(step: str) -> Callable[[str, str], Awaitable[None]]:
            async def on_line(line: str, stream: str) -> None:
                tail.append(line)
                await self.events.publish(
                    sandbox_id, "log", {"step": step, "stream": stream, "line": line}
                )

            return on_line

        async def command(step: str, cmd: str, timeout: float) -> list[str]:
            state.commands += 1
            try:
                result = await self.provider.exec(
                    handle,  # type: ignore[arg-type]
                    cmd,
                    timeout=timeout,
                    env={"PORT": str(plan.port)},
                    on_output=output(step),
                )
            except CommandTimeout:
                raise StepFailed(
                    step, f"{step} timed out after {timeout:g}s", code="step_timeout"
                ) from None
            if result.exit_code != 0:
                raise StepFailed(step, f"{step} failed", result.exit_code)
            return list(result.output_tail)

        step = "create"
        try:
            await advance("creating")
            try:
                async with asyncio.timeout(self.settings.create_timeout):
                    handle = await self.provider.create(spec, timeout=self.settings.create_timeout)
            except TimeoutError:
                raise StepFailed(
                    step, "sandbox creation timed out", code="provider_timeout"
                ) from None
            step = "upload"
            await advance("uploading", provider_id=handle.provider_id)
            install, build, start, port = plan.install, plan.build, plan.start, plan.port
            cached = self.cache.get(plan.cache_key) if self.cache and plan.cache_key else None
            if plan.git is not None:
                state.commands += 1
                await self.provider.clone(
                    handle, plan.git.url, plan.git.ref, timeout=self.settings.clone_timeout
                )
                if start is None:
                    found = await command("detect", DETECT, self.settings.step_timeout)
                    d_install, d_build, start, d_port = detected_commands(found)
                    install, build = install or d_install, build or d_build
                    port = d_port or port
            else:
                files = plan.files
                if cached is not None:  # built before: its output + this request's data
                    files = [FileData(f"{plan.output_dir}/{f.path}", f.content) for f in cached]
                    files += plan.overlay
                    install = build = None
                    await output("upload")(f"reusing the build of {plan.cache_key}", "stdout")
                async with asyncio.timeout(self.settings.upload_timeout):
                    await self.provider.upload(handle, files)
            if install:
                step = "install"
                await advance("installing")
                await command(step, install, self.settings.step_timeout)
            if build:
                step = "build"
                await advance("building")
                await command(step, build, self.settings.step_timeout)
                if self.cache is not None and plan.cache_key and cached is None:
                    await self._keep_build(handle, plan, self.cache)
            step = "start"
            await advance("starting", port=port)
            state.commands += 1
            await self.provider.start_server(
                handle, start or "", port=port, env={"PORT": str(port)}, on_output=output("start")
            )
            await self._probe(handle, port)
            link = await self.provider.preview_link(
                handle, port, open_url_ttl_seconds=self.settings.open_url_ttl_seconds
            )
            now = self.clock.now()
            await advance(
                "running",
                preview_url=link.url,
                preview_token=link.token,
                open_url=link.open_url,
                open_url_expires_at=link.open_url_expires_at,
                ready_at=now,
                charged_until=now,
                last_heartbeat_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            log.info("sandbox.running", sandbox_id=sandbox_id, port=port)
        except Superseded:
            log.info("sandbox.build_superseded", sandbox_id=sandbox_id, step=step)
            await self._delete(handle, sandbox_id)
        except asyncio.CancelledError:
            await asyncio.shield(
                self._fail(
                    sandbox_id, state, tail, handle, "shutdown", "cancelled", code="shutdown"
                )
            )
            raise
        except Exception as exc:
            failed = failure_of(exc, step)
            if failed.code == "internal_error":  # none of ours: a bug, with its traceback
                log.exception("sandbox.build_crashed", sandbox_id=sandbox_id, step=step)
            await self._fail(
                sandbox_id, state, tail, handle, failed.step, failed.message, failed.exit_code,
                failed.code,
            )  # fmt: skip
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _keep_build(
        self, handle: ProviderSandbox, plan: BuildPlan, cache: BuildCache
    ) -> None:
        """Read the built output back (one command: tar | base64) into the build cache. Best
        effort: a preview never fails because its output could not be cached."""
        assert plan.cache_key is not None
        chunks: list[str] = []

        async def collect(line: str, stream: str) -> None:
            if stream == "stdout":
                chunks.append(line.strip())

        out = shlex.quote(plan.output_dir)
        cmd = f"tar -C {out} --exclude=./{PROMPT_FILE} -czf - . | base64"
        try:
            result = await self.provider.exec(handle, cmd, timeout=60, on_output=collect)
            if result.exit_code == 0:
                await cache.put(plan.cache_key, base64.b64decode("".join(chunks), validate=True))
        except (ProviderError, binascii.Error, ValueError) as exc:
            log.warning("build_cache.read_back_failed", key=plan.cache_key, error=str(exc)[:200])

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
            if not await self.repo.renew_lease(sandbox_id, self.replica_id, until):
                return

    async def _delete(self, handle: ProviderSandbox | None, sandbox_id: str) -> None:
        if handle is None:
            return
        try:
            await self.provider.delete(handle)
            log.info("sandbox.deleted", sandbox_id=sandbox_id)
        except ProviderError as exc:
            log.warning("sandbox.delete_failed", sandbox_id=sandbox_id, code=exc.code)

    async def _fail(
        self,
        sandbox_id: str,
        state: _Progress,
        tail: deque[str],
        handle: ProviderSandbox | None,
        step: str,
        message: str,
        exit_code: int | None = None,
        code: str | None = None,
    ) -> None:
        await self._delete(handle, sandbox_id)
        reason = f"error:{step}"
        moved = await self.repo.transition(
            sandbox_id,
            from_status=(state.status,),
            to_status="error",
            now=self.clock.now(),
            reason=reason,
            error_step=step,
            error_message=message,
            error_code=code or "step_failed",
            error_exit_code=exit_code,
            logs_tail=list(tail),
            commands_run=state.commands,
            stopped_at=self.clock.now(),
            lease_owner=None,
            lease_expires_at=None,
        )
        if moved:
            log.warning(
                "sandbox.build_failed", sandbox_id=sandbox_id, step=step, exit_code=exit_code
            )
            await self.events.publish(
                sandbox_id,
                "status",
                {"status": "error", "reason": reason, "step": step, "code": code or "step_failed",
                 "message": message, "exitCode": exit_code},
            )  # fmt: skip
            await self.on_finished(sandbox_id, "error", reason)
