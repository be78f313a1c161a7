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
from daytona import AsyncDaytona, AsyncSandbox, DaytonaConfig, FileUpload, ListSandboxesQuery

from midori_preview.clock import Clock, SystemClock
from midori_preview.providers.base import (
    CommandTimeout,
    ExecResult,
    FileData,
    GitCredentials,
    OutputCallback,
    PreviewLink,
    ProviderRejected,
    ProviderSandbox,
    ProviderSandboxInfo,
    SandboxSpec,
    ServerExited,
    Upstream,
)
from midori_preview.providers.daytona.config import DaytonaProviderConfig
from midori_preview.providers.daytona.errors import DaytonaRetry
from midori_preview.providers.daytona.git import GitClone
from midori_preview.providers.daytona.labels import label_value, sandbox_info
from midori_preview.providers.daytona.lifecycle import DaytonaSandboxFailed, Lifecycle
from midori_preview.providers.daytona.probing import PROBE_HEADERS, Answer, classify
from midori_preview.providers.daytona.sessions import OutputLines, SessionCommands, shell_script
from midori_preview.retry import RetryPolicy

log = structlog.get_logger(__name__)


# What aiohttp refuses in a header (the SDK sends each destination as a multipart filename).
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_CLEANUP = "cleanup"  # key of the background tasks deleting what failed creates left

__all__ = ["DaytonaProvider", "DaytonaSandboxFailed"]


class DaytonaProvider:
    """The `SandboxProvider` port on Daytona (see `providers.base`)."""

    name = "daytona"
    probe_interval = 0.025  # each probe is a request through Daytona's preview proxy

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
        self._lifecycle = Lifecycle(self._client, config, self._retry, self.list_sandboxes)
        self._git = GitClone(self._retry)
        self._handles: dict[str, AsyncSandbox] = {}
        self._exited: dict[tuple[str, int], int] = {}  # (provider id, port) → server exit code
        self._links: dict[tuple[str, int], tuple[str, str]] = {}
        self._exec_sessions: dict[str, str] = {}
        self._exec_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, set[asyncio.Task[object]]] = {}

    # --- the port ----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec, *, timeout: float) -> ProviderSandbox:
        try:
            sandbox = await self._lifecycle.create(spec, timeout=timeout)
        except asyncio.CancelledError:  # the caller gave up: delete what it may have made
            self._spawn(_CLEANUP, self._lifecycle.discard(spec, None))
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
        if any(f.path[-1:].isspace() or re.search(CONTROL, f.path) for f in files):
            # the toolbox would trim it (TrimSpace); the SDK's multipart header refuses it
            raise ProviderRejected("a file path ends with white space or has a control character")
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
        self._exited.pop((sandbox.provider_id, port), None)

        async def follow() -> None:
            code = await self._sessions.stream_server(handle, session_id, cmd_id, lines)
            if code is not None:  # noticed at the next probe, with the output all delivered
                self._exited[(sandbox.provider_id, port)] = code

        self._spawn(sandbox.provider_id, follow()).set_name(f"daytona-server-{sandbox.sandbox_id}")

    async def probe(self, sandbox: ProviderSandbox, port: int, *, timeout: float) -> bool:
        """Ready only when the app itself answered (see `probing`); ServerExited once the
        server's command ended."""
        if (code := self._exited.get((sandbox.provider_id, port))) is not None:
            raise ServerExited(f"the server exited (code {code}) before answering", exit_code=code)
        url, token = await self._preview(sandbox, port)
        headers = {"x-daytona-preview-token": token, **PROBE_HEADERS}
        try:
            response = await self._http.get(url, headers=headers, timeout=timeout)
        except httpx.HTTPError:
            return False
        answer = classify(response, url)
        if answer is Answer.STALE_TOKEN:  # the token resets with a restart: ask for it again
            self._links.pop((sandbox.provider_id, port), None)
        return answer is Answer.APP

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
        """Delete, waiting out Daytona's transitions (409) up to `delete_deadline_seconds`."""
        handle = self._handles.get(sandbox.provider_id)
        await self._forget(sandbox.provider_id)
        await self._lifecycle.delete(sandbox.provider_id, handle)
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
        """Clone `url` at `ref` (branch, tag or full commit id) into the workdir (`git`)."""
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and (parts.username or parts.password):
            raise ProviderRejected("credentials belong in username/password, not in the URL")
        handle = await self._handle(sandbox)

        async def run(command: str, seconds: float) -> ExecResult:
            return await self.exec(sandbox, command, timeout=seconds)

        await self._git.clone(
            handle, sandbox.workdir, url, ref, timeout=timeout, credentials=credentials, run=run
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
        for exited in [each for each in self._exited if each[0] == key]:
            del self._exited[exited]
        for link in [link for link in self._links if link[0] == key]:
            del self._links[link]
