"""Daytona sandboxes through the `daytona` SDK's async client.

One `AsyncDaytona` client serves every call; it is built with the provider and closed by `aclose`.
Every call has a timeout and goes through `DaytonaRetry` (see `errors`). Commands run as
session commands so that their output streams live (`sessions`); the server's output is
followed by a background task per sandbox, cancelled on delete.

Sandboxes carry labels (`midori-preview=1`, deployment, our sandbox id, user, project) so that the
service can always find what it owns, and Daytona's auto-stop is set a little above our idle
timeout, with auto-delete on stop, as a safety net should the service die. Daytona counts
preview traffic as activity, but a watched page that fetches nothing makes none: while someone
watches, the reaper calls `keep_alive`.

No hidden calls: handles, preview URLs and tokens are cached per sandbox, so heartbeats and status
reads never reach Daytona.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
    DaytonaConnectionError,
    DaytonaError,
    DaytonaTimeoutError,
    FileUpload,
    ListSandboxesQuery,
    Resources,
)

from midori_preview.clock import Clock, SystemClock
from midori_preview.providers.base import (
    CommandTimeout,
    ExecResult,
    FileData,
    GitCredentials,
    OutputCallback,
    PreviewLink,
    ProviderError,
    ProviderNotFound,
    ProviderRejected,
    ProviderSandbox,
    ProviderSandboxInfo,
    ProviderState,
    ProviderTimeout,
    SandboxFailed,
    SandboxSpec,
    Upstream,
)
from midori_preview.providers.daytona.config import DaytonaProviderConfig
from midori_preview.providers.daytona.errors import (
    DaytonaRetry,
    is_ambiguous,
    is_retryable,
    retry_after_seconds,
    status_of,
    to_provider_error,
)
from midori_preview.providers.daytona.labels import label_value, sandbox_info
from midori_preview.providers.daytona.sessions import OutputLines, SessionCommands, shell_script
from midori_preview.providers.labels import owned_selector, sandbox_labels
from midori_preview.retry import RetryPolicy

log = structlog.get_logger(__name__)


_COMMIT = re.compile(r"[0-9a-f]{40}")
_CLEANUP = "cleanup"  # key of the background tasks deleting what failed creates left


class DaytonaSandboxFailed(SandboxFailed):
    """Daytona put the sandbox in its error state; `error_reason` is its (trimmed) reason."""

    def __init__(self, message: str, *, error_reason: str | None) -> None:
        super().__init__(message)
        self.error_reason = error_reason


class DaytonaProvider:
    """The `SandboxProvider` port on Daytona (see `providers.base`)."""

    name = "daytona"

    def __init__(
        self,
        config: DaytonaProviderConfig,
        *,
        client: AsyncDaytona | None = None,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._owns_client = client is None
        self._client = client or AsyncDaytona(
            DaytonaConfig(api_key=config.api_key, api_url=config.api_url, target=config.target)
        )
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._clock = clock or SystemClock()
        self._timeout = config.request_timeout_seconds
        self._retry = DaytonaRetry(
            RetryPolicy(
                attempts=config.retry_attempts,
                deadline_seconds=config.retry_deadline_seconds,
                initial_backoff_seconds=config.retry_initial_backoff_seconds,
                max_backoff_seconds=config.retry_max_backoff_seconds,
            )
        )
        self._sessions = SessionCommands(
            self._retry, request_timeout=self._timeout, poll_interval=config.poll_interval_seconds
        )
        self._handles: dict[str, AsyncSandbox] = {}
        self._links: dict[tuple[str, int], tuple[str, str]] = {}
        self._exec_sessions: dict[str, str] = {}
        self._exec_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, set[asyncio.Task[object]]] = {}

    # --- the port ----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, *, timeout: float) -> ProviderSandbox:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                sandbox = await self._client.create(
                    self._create_params(spec), timeout=max(0.001, deadline - loop.time())
                )
                break
            except DaytonaError as exc:
                status = status_of(exc)
                if isinstance(exc, DaytonaTimeoutError) and status is None:  # out of time
                    await self._discard(spec, exc.sandbox_id)
                    raise ProviderTimeout(f"sandbox creation took over {timeout:g}s") from None
                if status is None and not isinstance(exc, DaytonaConnectionError):
                    # Accepted, then failed on its way to `started` (Daytona's error state).
                    found = await self._discard(spec, None)
                    reasons = [i.error_reason for i in found if i.state is ProviderState.ERROR]
                    if reasons:
                        raise DaytonaSandboxFailed(
                            "the sandbox failed to start", error_reason=reasons[0]
                        ) from None
                    raise to_provider_error(exc, "create sandbox") from None
                if is_ambiguous(exc):  # it may exist even so: never leave a twin behind
                    await self._discard(spec, None)
                wait = retry_after_seconds(exc) or self._retry.backoff(attempt)
                if (
                    not is_retryable(exc, idempotent=True)
                    or attempt >= self._config.retry_attempts
                    or loop.time() + wait >= deadline
                ):
                    raise to_provider_error(exc, "create sandbox") from None
                log.info("daytona.retry", action="create sandbox", attempt=attempt, wait=wait)
                await asyncio.sleep(wait)
            except asyncio.CancelledError:
                self._spawn(_CLEANUP, self._discard(spec, None))
                raise
        self._handles[sandbox.id] = sandbox
        log.info("daytona.sandbox_created", sandbox_id=spec.sandbox_id, provider_id=sandbox.id)
        return ProviderSandbox(self.name, sandbox.id, spec.sandbox_id, self._config.workdir)

    def attach(self, provider_id: str, sandbox_id: str) -> ProviderSandbox:
        return ProviderSandbox(self.name, provider_id, sandbox_id, self._config.workdir)

    async def upload(self, sandbox: ProviderSandbox, files: Sequence[FileData]) -> None:
        if not files:
            return
        if any(f.path.startswith("/") or ".." in f.path.split("/") for f in files):
            raise ProviderRejected("a file path is not a relative path inside the project")
        handle = await self._handle(sandbox)
        uploads = [
            FileUpload(source=bytes(f.content), destination=f"{sandbox.workdir}/{f.path}")
            for f in files
        ]
        seconds = self._config.upload_timeout_seconds
        await self._retry.call(
            "upload files", lambda: handle.fs.upload_files(uploads, timeout=seconds)
        )

    async def exec(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        handle = await self._handle(sandbox)
        script = shell_script(sandbox.workdir, command, env or {})
        lines = OutputLines(on_output, self._config.output_tail_lines)
        async with self._exec_locks.setdefault(handle.id, asyncio.Lock()):
            session_id = self._exec_sessions.get(handle.id)
            if session_id is None:
                session_id = f"midori-exec-{uuid.uuid4().hex[:8]}"
                await self._sessions.create_session(handle, session_id)
                self._exec_sessions[handle.id] = session_id
            try:
                async with asyncio.timeout(timeout):
                    cmd_id = await self._sessions.start(handle, session_id, script)
                    await self._sessions.follow(handle, session_id, cmd_id, lines)
                    exit_code = await self._sessions.exit_code(handle, session_id, cmd_id)
            except TimeoutError:
                self._exec_sessions.pop(handle.id, None)
                await self._sessions.delete_session_quietly(handle, session_id)  # kills it
                raise CommandTimeout(f"the command ran longer than {timeout:g}s") from None
            finally:
                await lines.flush()
        return ExecResult(exit_code=exit_code, output_tail=tuple(lines.tail))

    async def start_server(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        handle = await self._handle(sandbox)
        script = shell_script(sandbox.workdir, command, {"PORT": str(port), **(env or {})})
        session_id = f"midori-server-{port}-{uuid.uuid4().hex[:8]}"
        await self._sessions.create_session(handle, session_id)
        cmd_id = await self._sessions.start(handle, session_id, script)
        lines = OutputLines(on_output, self._config.output_tail_lines)
        follow = self._sessions.stream_server(handle, session_id, cmd_id, lines)
        self._spawn(sandbox.provider_id, follow).set_name(f"daytona-server-{sandbox.sandbox_id}")

    async def probe(self, sandbox: ProviderSandbox, port: int, *, timeout: float) -> bool:
        url, token = await self._preview(sandbox, port)
        headers = {"x-daytona-preview-token": token, "X-Daytona-Skip-Preview-Warning": "true"}
        try:
            response = await self._http.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            return False
        if response.status_code == 401:  # the token went stale (a restart): ask for it again
            self._links.pop((sandbox.provider_id, port), None)
            return False
        # Daytona's proxy answers 502/503/504 itself while nothing listens on the port.
        return response.status_code not in (502, 503, 504)

    async def preview_link(
        self, sandbox: ProviderSandbox, port: int, *, open_url_ttl_seconds: int
    ) -> PreviewLink:
        url, token = await self._preview(sandbox, port)
        handle = await self._handle(sandbox)
        expires_at = self._clock.now() + timedelta(seconds=open_url_ttl_seconds)
        signed = await self._retry.call(
            "sign preview link",
            lambda: handle.create_signed_preview_url(
                port, expires_in_seconds=open_url_ttl_seconds, request_timeout=self._timeout
            ),
        )
        return PreviewLink(url, token, open_url=signed.url, open_url_expires_at=expires_at)

    async def upstream(self, sandbox: ProviderSandbox, port: int) -> Upstream:
        """Daytona's preview URL with its token and the warning-page skip: the service's gateway
        adds them, so browsers never meet Daytona's token or its warning page."""
        url, token = await self._preview(sandbox, port)
        headers = {"x-daytona-preview-token": token, "X-Daytona-Skip-Preview-Warning": "true"}
        return Upstream(url, headers)

    async def delete(self, sandbox: ProviderSandbox) -> None:
        handle = self._handles.get(sandbox.provider_id)
        await self._forget(sandbox.provider_id)
        await self._delete_id(sandbox.provider_id, handle)
        log.info(
            "daytona.sandbox_deleted",
            sandbox_id=sandbox.sandbox_id,
            provider_id=sandbox.provider_id,
        )

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[ProviderSandboxInfo]:
        query = ListSandboxesQuery(labels={k: label_value(v) for k, v in labels.items()}, limit=100)

        async def fetch() -> list[ProviderSandboxInfo]:
            listing = self._client.list(query, request_timeout=self._timeout)
            return [sandbox_info(sandbox) async for sandbox in listing]

        return await self._retry.call("list sandboxes", fetch)

    async def aclose(self) -> None:
        if cleanups := self._tasks.get(_CLEANUP):
            await asyncio.wait(cleanups, timeout=self._timeout)
        for key in list(self._tasks):
            await self._forget(key)
        if self._owns_http:
            await self._http.aclose()
        if self._owns_client:
            await self._client.close()  # type: ignore[no-untyped-call]

    # --- sources and activity -----------------------------------------------------------------

    async def clone(
        self,
        sandbox: ProviderSandbox,
        url: str,
        ref: str | None,
        *,
        timeout: float,
        credentials: GitCredentials | None = None,
    ) -> None:
        """Clone `url` at `ref` (branch, tag or full commit id) into the workdir."""
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and (parts.username or parts.password):
            raise ProviderRejected("credentials belong in username/password, not in the URL")
        handle = await self._handle(sandbox)
        commit = ref if ref is not None and _COMMIT.fullmatch(ref) else None
        await self._retry.call(
            "clone repository",
            lambda: handle.git.clone(
                url,
                sandbox.workdir,
                branch=None if commit else ref,
                commit_id=commit,
                username=credentials.username if credentials else None,
                password=credentials.password if credentials else None,
                request_timeout=timeout,
            ),
            idempotent=False,
        )

    async def keep_alive(self, sandbox: ProviderSandbox) -> bool:
        """Reset Daytona's auto-stop clock for a watched sandbox (a page that fetches nothing
        makes no preview traffic, which would count as activity)."""
        handle = await self._handle(sandbox)
        await self._retry.call(
            "refresh activity", lambda: handle.refresh_activity(request_timeout=self._timeout)
        )
        return True

    # --- helpers -------------------------------------------------------------------------------

    def _create_params(
        self, spec: SandboxSpec
    ) -> CreateSandboxFromSnapshotParams | CreateSandboxFromImageParams:
        cfg = self._config
        ours = sandbox_labels(
            deployment=cfg.deployment,
            sandbox_id=spec.sandbox_id,
            user_id=spec.user_id,
            project_id=spec.project_id,
        )
        labels = {key: label_value(value) for key, value in {**spec.labels, **ours}.items()}
        common = {
            "labels": labels,
            "env_vars": dict(spec.env),
            "public": False,
            "auto_stop_interval": cfg.auto_stop_minutes,
            "auto_delete_interval": 0,  # deleted as soon as it stops
        }
        if cfg.image is not None:
            resources = Resources(cpu=cfg.cpu, memory=cfg.memory, disk=cfg.disk)
            return CreateSandboxFromImageParams(image=cfg.image, resources=resources, **common)
        return CreateSandboxFromSnapshotParams(snapshot=cfg.snapshot, **common)

    async def _handle(self, sandbox: ProviderSandbox) -> AsyncSandbox:
        handle = self._handles.get(sandbox.provider_id)
        if handle is None:
            handle = await self._find(sandbox.provider_id)
            self._handles[sandbox.provider_id] = handle
        return handle

    async def _find(self, provider_id: str) -> AsyncSandbox:
        return await self._retry.call(
            "find sandbox", lambda: self._client.get(provider_id, request_timeout=self._timeout)
        )

    async def _preview(self, sandbox: ProviderSandbox, port: int) -> tuple[str, str]:
        key = (sandbox.provider_id, port)
        if key not in self._links:
            handle = await self._handle(sandbox)
            link = await self._retry.call(
                "get preview link",
                lambda: handle.get_preview_link(port, request_timeout=self._timeout),
            )
            self._links[key] = (link.url, link.token)
        return self._links[key]

    def _spawn(self, key: str, work: Coroutine[Any, Any, object]) -> asyncio.Task[object]:
        task = asyncio.create_task(work)
        tasks = self._tasks.setdefault(key, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def _forget(self, key: str) -> None:
        """Drop what we hold for a sandbox and stop its background tasks."""
        tasks = self._tasks.pop(key, set())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        self._handles.pop(key, None)
        self._exec_sessions.pop(key, None)
        self._exec_locks.pop(key, None)
        for link in [link for link in self._links if link[0] == key]:
            del self._links[link]

    async def _delete_id(self, provider_id: str, handle: AsyncSandbox | None = None) -> None:
        try:
            target = handle or await self._find(provider_id)
            await self._retry.call("delete sandbox", lambda: target.delete(timeout=self._timeout))
        except ProviderNotFound:
            pass  # already gone: that is what we wanted

    async def _discard(
        self, spec: SandboxSpec, provider_id: str | None
    ) -> list[ProviderSandboxInfo]:
        """Delete whatever a failed create left behind; returns what carried our sandbox id."""
        found: list[ProviderSandboxInfo] = []
        try:
            found = await self.list_sandboxes(
                owned_selector(self._config.deployment, sandbox_id=spec.sandbox_id)
            )
            ids = {info.provider_id for info in found}
            if provider_id is not None:
                ids.add(provider_id)
            for each in ids:
                await self._delete_id(each)
                log.info("daytona.leftover_deleted", sandbox_id=spec.sandbox_id, provider_id=each)
        except ProviderError as exc:
            log.warning("daytona.leftover_not_deleted", sandbox_id=spec.sandbox_id, code=exc.code)
        return found
