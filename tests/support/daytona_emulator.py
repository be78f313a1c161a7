"""A local emulator of the Daytona API and sandbox toolbox, served to the real `daytona` SDK.

It speaks the wire protocol described in /work/shared/DAYTONA.md: sandbox CRUD, labels, auto-stop,
preview links (plain and signed), bulk upload, process execution, sessions with the follow
WebSocket, git clone. Sandboxes are directories; commands really run (`bash -c`), each in its own
process group, with a clean environment. When bubblewrap works on this host, the sandbox directory
is mounted at /home/daytona for its commands, so absolute paths line up with a real sandbox;
otherwise commands get the directory as cwd and HOME, and `/home/daytona` in a command line is
rewritten to it. Only paths under /home/daytona (or relative to it) are accepted for files.
`process/execute` defaults to a 10 s timeout, as the API documents; sessions are not persistent
shells (each command is its own `bash -c`, so `cd`/`export` do not carry over).

Preview URLs really serve: `http://127.0.0.1:PORT/preview/{sandboxId}/{port}/...` proxies to
`127.0.0.1:{port}` (header `x-daytona-preview-token` required) and
`http://127.0.0.1:PORT/signed/{token}/...` carries its credential in the URL. With
`preview_scheme="host"` the links are `http://{port}-{sandboxId|token}.preview.localhost:PORT/`
instead, which browsers resolve to 127.0.0.1 and which keeps root-relative asset paths working.

Faults (latency, status answers, connection resets, create that hangs / fails / answers late) are
configured with methods on the emulator object, from any thread. Every request is recorded.

The server runs on its own event loop in a background thread, so it serves synchronous and
asynchronous tests alike. `python -m tests.support.daytona_emulator --port 3986` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web

HOME = "/home/daytona"
ORGANIZATION_ID = "emulated-organization"
_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDOUT = b"\x01\x01\x01"
_STDERR = b"\x02\x02\x02"
_SOURCE_API = "DAYTONA_API"
_SOURCE_DAEMON = "DAYTONA_DAEMON"
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "x-daytona-preview-token",
        "x-daytona-skip-preview-warning",
    }
)
_PREVIEW_HOST = re.compile(r"^(\d+)-([A-Za-z0-9-]+)\.preview\.localhost(?::\d+)?$")

# --- route keys: "METHOD /template", exactly as recorded -----------------------------------------

CREATE = "POST /api/sandbox"
LIST = "GET /api/sandbox"
GET = "GET /api/sandbox/{sandboxId}"
DELETE = "DELETE /api/sandbox/{sandboxId}"
START = "POST /api/sandbox/{sandboxId}/start"
STOP = "POST /api/sandbox/{sandboxId}/stop"
LABELS = "PUT /api/sandbox/{sandboxId}/labels"
AUTOSTOP = "POST /api/sandbox/{sandboxId}/autostop/{interval}"
AUTOARCHIVE = "POST /api/sandbox/{sandboxId}/autoarchive/{interval}"
AUTODELETE = "POST /api/sandbox/{sandboxId}/autodelete/{interval}"
LAST_ACTIVITY = "POST /api/sandbox/{sandboxId}/last-activity"
PREVIEW_URL = "GET /api/sandbox/{sandboxId}/ports/{port}/preview-url"
SIGNED_PREVIEW_URL = "GET /api/sandbox/{sandboxId}/ports/{port}/signed-preview-url"
EXPIRE_SIGNED_PREVIEW_URL = (
    "POST /api/sandbox/{sandboxId}/ports/{port}/signed-preview-url/{token}/expire"
)
TOOLBOX_PROXY_URL = "GET /api/sandbox/{sandboxId}/toolbox-proxy-url"
SOCKET_IO = "GET /api/socket.io/"
UPLOAD = "POST /toolbox/{sandboxId}/files/bulk-upload"
EXECUTE = "POST /toolbox/{sandboxId}/process/execute"
SESSION_CREATE = "POST /toolbox/{sandboxId}/process/session"
SESSION_LIST = "GET /toolbox/{sandboxId}/process/session"
SESSION_GET = "GET /toolbox/{sandboxId}/process/session/{sessionId}"
SESSION_DELETE = "DELETE /toolbox/{sandboxId}/process/session/{sessionId}"
SESSION_EXEC = "POST /toolbox/{sandboxId}/process/session/{sessionId}/exec"
SESSION_COMMAND = "GET /toolbox/{sandboxId}/process/session/{sessionId}/command/{commandId}"
SESSION_LOGS = "GET /toolbox/{sandboxId}/process/session/{sessionId}/command/{commandId}/logs"
GIT_CLONE = "POST /toolbox/{sandboxId}/git/clone"
PREVIEW = "* /preview/{sandboxId}/{port}{tail}"
SIGNED_PREVIEW = "* /signed/{token}{tail}"
PREVIEW_HOST = "* {port}-{id}.preview.localhost"
UNMATCHED = "* (unmatched)"

_API_ROUTES = frozenset(
    {
        CREATE,
        LIST,
        GET,
        DELETE,
        START,
        STOP,
        LABELS,
        AUTOSTOP,
        AUTOARCHIVE,
        AUTODELETE,
        LAST_ACTIVITY,
        PREVIEW_URL,
        SIGNED_PREVIEW_URL,
        EXPIRE_SIGNED_PREVIEW_URL,
        TOOLBOX_PROXY_URL,
        UPLOAD,
        EXECUTE,
        SESSION_CREATE,
        SESSION_LIST,
        SESSION_GET,
        SESSION_DELETE,
        SESSION_EXEC,
        SESSION_COMMAND,
        SESSION_LOGS,
        GIT_CLONE,
    }
)
ROUTES = _API_ROUTES | {SOCKET_IO, PREVIEW, SIGNED_PREVIEW, PREVIEW_HOST}


# --- what tests can read -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedCall:
    method: str
    route: str  # one of the route keys above
    path: str
    at: float  # time.monotonic()


@dataclass(frozen=True, slots=True)
class SandboxView:
    """A snapshot of one emulated sandbox."""

    id: str
    state: str
    labels: dict[str, str]
    env: dict[str, str]
    auto_stop_interval: int
    auto_archive_interval: int
    auto_delete_interval: int
    created_at: datetime
    error_reason: str | None
    home: Path  # the directory mounted at /home/daytona
    preview_token: str
    snapshot: str | None
    target: str
    public: bool
    cpu: int
    memory: int
    disk: int
    built_from_image: bool


@dataclass(frozen=True, slots=True)
class GitCloneRecord:
    sandbox_id: str
    url: str
    path: str
    branch: str | None
    commit_id: str | None
    username: str | None
    password: str | None


# --- internal state ---------------------------------------------------------------------------


class _ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        source: str = _SOURCE_API,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.source = status, message, code, source
        self.headers = headers or {}


@dataclass(eq=False)
class _Command:
    id: str
    command: str
    exit_code: int | None = None
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # (prefix, data)
    done: bool = False
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)


@dataclass(eq=False)
class _Session:
    id: str
    commands: dict[str, _Command] = field(default_factory=dict)
    pgids: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Signed:
    port: int
    expires_at: float  # time.time()


@dataclass(eq=False)
class _Sandbox:
    id: str
    name: str
    home: Path
    labels: dict[str, str]
    env: dict[str, str]
    snapshot: str | None
    target: str
    public: bool
    cpu: int
    memory: int
    disk: int
    auto_stop_interval: int
    auto_archive_interval: int
    auto_delete_interval: int
    created_at: datetime
    updated_at: datetime
    state: str = "started"
    error_reason: str | None = None
    ready_at: float | None = None  # monotonic time at which `starting` turns `started`
    built_from_image: bool = False
    preview_token: str = field(default_factory=lambda: secrets.token_hex(16))
    signed: dict[str, _Signed] = field(default_factory=dict)
    sessions: dict[str, _Session] = field(default_factory=dict)
    pgids: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Fault:
    kind: Literal["status", "reset"]
    remaining: int
    status: int = 0
    retry_after: float | None = None
    message: str | None = None
    code: str | None = None


@dataclass(eq=False)
class _CreatePlan:
    kind: Literal["hang", "error", "slow"]
    remaining: int
    reason: str = ""
    delay: float = 0.0


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _kill_group(pgid: int) -> bool:
    """SIGKILL a process group; False when it has no member left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _ApiError(400, f"{what} must be an object of string values")
    return dict(value)


class DaytonaEmulator:
    """The Daytona API + toolbox on 127.0.0.1 for the real SDK: start it, use `api_url`."""

    def __init__(
        self,
        *,
        port: int = 0,
        api_key: str | None = None,
        preview_scheme: Literal["path", "host"] = "path",
        use_bwrap: bool | None = None,
        target: str = "us",
    ) -> None:
        self._requested_port = port
        self.api_key = api_key or f"emu-{secrets.token_hex(12)}"
        self.preview_scheme = preview_scheme
        self.target = target
        self._use_bwrap = use_bwrap
        self._bwrap: str | None = None
        self._lock = threading.RLock()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._deleted: list[str] = []
        self._calls: list[RecordedCall] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._latency: dict[str | None, float] = {}
        self._create_plans: list[_CreatePlan] = []
        self._start_delay = 0.0
        self._git_clones: list[GitCloneRecord] = []
        self._port = 0
        self._root: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DaytonaEmulator:
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self._root = Path(tempfile.mkdtemp(prefix="daytona-emulator-"))
        self._bwrap = self._detect_bwrap()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self._port = sock.getsockname()[1]
        loop = asyncio.new_event_loop()
        self._loop = loop
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._astart(sock))
            except BaseException as exc:
                failure.append(exc)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="daytona-emulator", daemon=True)
        self._thread.start()
        started.wait(15)
        if failure or not started.is_set():
            self._thread.join(5)
            self._thread = self._loop = None
            sock.close()
            shutil.rmtree(self._root, ignore_errors=True)
            cause = failure[0] if failure else None
            raise RuntimeError("the Daytona emulator failed to start") from cause
        return self

    def stop(self) -> None:
        """Kill every process the emulator started, stop serving and remove its directories."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._astop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        with self._lock:
            for sandbox in self._sandboxes.values():
                self._terminate(sandbox)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._thread = self._loop = None

    def __enter__(self) -> DaytonaEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> DaytonaEmulator:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    @property
    def uses_bwrap(self) -> bool:
        return self._bwrap is not None

    def daytona_config(self, **overrides: Any) -> Any:
        """A full `DaytonaConfig` for this emulator (so the SDK reads nothing from the env)."""
        from daytona import DaytonaConfig

        values: dict[str, Any] = {
            "api_key": self.api_key,
            "api_url": self.api_url,
            "target": self.target,
        }
        values.update(overrides)
        return DaytonaConfig(**values)

    # --- fault injection (thread-safe) ----------------------------------------------------------

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        """Delay every answer (or those of `route`) by `seconds`; 0 removes the delay."""
        self._check_route(route)
        with self._lock:
            self._latency[route] = seconds

    def fail_next(
        self,
        route: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
        code: str | None = None,
    ) -> None:
        """The next `times` calls of `route` answer `status` (429 carries `Retry-After`)."""
        self._check_route(route)
        fault = _Fault("status", times, status, retry_after, message, code)
        with self._lock:
            self._faults.setdefault(route, []).append(fault)

    def reset_next(self, route: str, times: int = 1) -> None:
        """The next `times` calls of `route` get their connection reset without an answer."""
        self._check_route(route)
        with self._lock:
            self._faults.setdefault(route, []).append(_Fault("reset", times))

    def hang_next_create(self, times: int = 1) -> None:
        """The next creates are recorded and stay `starting` forever."""
        with self._lock:
            self._create_plans.append(_CreatePlan("hang", times))

    def fail_next_create(self, reason: str = "runner failed", times: int = 1) -> None:
        """The next creates answer `starting`, then the sandbox is in `error` with `reason`."""
        with self._lock:
            self._create_plans.append(_CreatePlan("error", times, reason=reason))

    def slow_next_create(self, delay: float, times: int = 1) -> None:
        """The next creates are recorded at once (started) but answered only after `delay`."""
        with self._lock:
            self._create_plans.append(_CreatePlan("slow", times, delay=delay))

    def set_start_delay(self, seconds: float) -> None:
        """New sandboxes stay `starting` this long (default 0: created `started`)."""
        with self._lock:
            self._start_delay = seconds

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._latency.clear()
            self._create_plans.clear()
            self._start_delay = 0.0

    # --- recording and state (thread-safe) -----------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def count(self, route: str) -> int:
        self._check_route(route)
        with self._lock:
            return sum(1 for call in self._calls if call.route == route)

    def counts(self, *, api_only: bool = False) -> dict[str, int]:
        """Calls per route; `api_only` leaves out preview traffic and socket.io attempts."""
        with self._lock:
            counter = Counter(
                call.route for call in self._calls if not api_only or call.route in _API_ROUTES
            )
        return dict(sorted(counter.items()))

    def reset_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    @property
    def sandboxes(self) -> dict[str, SandboxView]:
        """Live sandboxes (deleted ones are gone from here, see `deleted`)."""
        with self._lock:
            return {sid: self._view(sb) for sid, sb in self._sandboxes.items()}

    @property
    def deleted(self) -> list[str]:
        with self._lock:
            return list(self._deleted)

    @property
    def git_clones(self) -> list[GitCloneRecord]:
        with self._lock:
            return list(self._git_clones)

    def sandbox_home(self, sandbox_id: str) -> Path:
        """The host directory that the sandbox sees as /home/daytona."""
        with self._lock:
            return self._sandboxes[sandbox_id].home

    def plant_sandbox(
        self,
        labels: dict[str, str],
        *,
        created_at: datetime | None = None,
        state: str = "started",
        error_reason: str | None = None,
        auto_stop_interval: int = 15,
        auto_delete_interval: int = -1,
    ) -> str:
        """Put a sandbox in place directly (as if someone created it long ago); returns its id."""
        moment = created_at or datetime.now(UTC)
        sandbox = self._new_sandbox(
            {"labels": labels, "autoStopInterval": auto_stop_interval},
            created_at=moment,
        )
        sandbox.state, sandbox.error_reason = state, error_reason
        sandbox.auto_delete_interval = auto_delete_interval
        with self._lock:
            self._sandboxes[sandbox.id] = sandbox
        return sandbox.id

    def stop_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox as Daytona's auto-stop would (ephemeral ones are deleted)."""
        with self._lock:
            sandbox = self._sandboxes[sandbox_id]
            self._stop(sandbox)

    # --- internals: server ------------------------------------------------------------------------

    def _check_route(self, route: str | None) -> None:
        if route is not None and route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; use the route constants of this module")

    def _detect_bwrap(self) -> str | None:
        if self._use_bwrap is False:
            return None
        exe = shutil.which("bwrap")
        works = False
        if exe is not None and self._root is not None:
            argv = [exe, *self._bwrap_mounts(self._root), "true"]
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                works = subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
        if not works and self._use_bwrap:
            raise RuntimeError("bubblewrap was required but does not work here")
        return exe if works else None

    @staticmethod
    def _bwrap_mounts(home: Path) -> list[str]:
        return ["--dev-bind", "/", "/", "--tmpfs", "/home", "--bind", str(home), HOME]

    async def _astart(self, sock: socket.socket) -> None:
        self._stopping = asyncio.Event()
        self._client = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            trust_env=False,
        )
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _astop(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        with self._lock:
            sandboxes = list(self._sandboxes.values())
        for sandbox in sandboxes:
            self._terminate(sandbox)
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._client is not None:
            await self._client.close()

    def _add_routes(self, app: web.Application) -> None:
        handlers: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            CREATE: self._create,
            LIST: self._list,
            GET: self._get,
            DELETE: self._delete,
            START: self._start,
            STOP: self._stop_route,
            LABELS: self._labels,
            AUTOSTOP: self._intervals,
            AUTOARCHIVE: self._intervals,
            AUTODELETE: self._intervals,
            LAST_ACTIVITY: self._last_activity,
            PREVIEW_URL: self._preview_url,
            SIGNED_PREVIEW_URL: self._signed_preview_url,
            EXPIRE_SIGNED_PREVIEW_URL: self._expire_signed,
            TOOLBOX_PROXY_URL: self._toolbox_proxy_url,
            SOCKET_IO: self._socket_io,
            UPLOAD: self._upload,
            EXECUTE: self._execute,
            SESSION_CREATE: self._session_create,
            SESSION_LIST: self._session_list,
            SESSION_GET: self._session_get,
            SESSION_DELETE: self._session_delete,
            SESSION_EXEC: self._session_exec,
            SESSION_COMMAND: self._session_command,
            SESSION_LOGS: self._session_logs,
            GIT_CLONE: self._git_clone,
        }
        for key, handler in handlers.items():
            method, path = key.split(" ", 1)
            app.router.add_route(method, path, handler)
        app.router.add_route("*", "/preview/{sandboxId}/{port:\\d+}{tail:(/.*)?}", self._preview)
        app.router.add_route("*", "/signed/{token}{tail:(/.*)?}", self._signed_preview)

    @staticmethod
    def _route_key(request: web.Request) -> str:
        route = request.match_info.route
        resource = route.resource
        if resource is None or request.match_info.http_exception is not None:
            return UNMATCHED
        canonical = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", resource.canonical)
        method = "*" if route.method == "*" else request.method
        return f"{method} {canonical}"

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        host_match = _PREVIEW_HOST.match(request.host) if self.preview_scheme == "host" else None
        route = PREVIEW_HOST if host_match else self._route_key(request)
        with self._lock:
            self._calls.append(RecordedCall(request.method, route, request.path, time.monotonic()))
            delay = self._latency.get(route, 0.0) + self._latency.get(None, 0.0)
            fault = self._take_fault(route)
        try:
            if delay:
                await self._sleep(delay)
            if fault is not None and fault.kind == "reset":
                return self._reset(request)
            if fault is not None:
                message = fault.message or f"injected {fault.status}"
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = f"{fault.retry_after:g}"
                raise _ApiError(fault.status, message, code=fault.code, headers=headers)
            if host_match is not None:
                return await self._host_preview(request, int(host_match[1]), host_match[2])
            if route in _API_ROUTES and request.headers.get("Authorization") != (
                f"Bearer {self.api_key}"
            ):
                raise _ApiError(401, "Unauthorized")
            return await handler(request)
        except _ApiError as err:
            return self._error_response(err)

    def _take_fault(self, route: str) -> _Fault | None:
        queue = self._faults.get(route)
        while queue:
            fault = queue[0]
            if fault.remaining <= 0:
                queue.pop(0)
                continue
            fault.remaining -= 1
            return fault
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        return web.Response(status=500)  # never reaches the client: the socket is gone

    @staticmethod
    def _error_response(err: _ApiError) -> web.Response:
        body: dict[str, Any] = {"statusCode": err.status, "message": err.message}
        if err.code is not None:
            body["code"], body["source"] = err.code, err.source
        return web.json_response(body, status=err.status, headers=err.headers)

    async def _sleep(self, seconds: float) -> None:
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            raise _ApiError(400, "invalid JSON body") from None
        if not isinstance(body, dict):
            raise _ApiError(400, "JSON body must be an object")
        return body

    # --- internals: sandboxes ---------------------------------------------------------------------

    def _new_sandbox(self, body: dict[str, Any], *, created_at: datetime) -> _Sandbox:
        assert self._root is not None
        sandbox_id = str(uuid.uuid4())
        home = self._root / sandbox_id
        intervals = {}
        for key, default in (
            ("autoStopInterval", 15),
            ("autoArchiveInterval", 7 * 24 * 60),
            ("autoDeleteInterval", -1),
        ):
            value = body.get(key, default)
            if value is None:
                value = default
            if not isinstance(value, int) or isinstance(value, bool):
                raise _ApiError(400, f"{key} must be an integer")
            intervals[key] = value
        resources = {}
        for key, default in (("cpu", 1), ("memory", 1), ("disk", 3)):
            value = body.get(key) or default
            if not isinstance(value, int):
                raise _ApiError(400, f"{key} must be an integer")
            resources[key] = value
        labels, env = _str_map(body.get("labels"), "labels"), _str_map(body.get("env"), "env")
        home.mkdir()
        return _Sandbox(
            id=sandbox_id,
            name=str(body.get("name") or sandbox_id),
            home=home,
            labels=labels,
            env=env,
            snapshot=body.get("snapshot"),
            target=str(body.get("target") or self.target),
            public=bool(body.get("public") or False),
            cpu=resources["cpu"],
            memory=resources["memory"],
            disk=resources["disk"],
            auto_stop_interval=intervals["autoStopInterval"],
            auto_archive_interval=intervals["autoArchiveInterval"],
            auto_delete_interval=intervals["autoDeleteInterval"],
            created_at=created_at,
            updated_at=created_at,
            built_from_image="buildInfo" in body,
        )

    def _view(self, sb: _Sandbox) -> SandboxView:
        self._advance(sb)
        return SandboxView(
            id=sb.id,
            state=sb.state,
            labels=dict(sb.labels),
            env=dict(sb.env),
            auto_stop_interval=sb.auto_stop_interval,
            auto_archive_interval=sb.auto_archive_interval,
            auto_delete_interval=sb.auto_delete_interval,
            created_at=sb.created_at,
            error_reason=sb.error_reason,
            home=sb.home,
            preview_token=sb.preview_token,
            snapshot=sb.snapshot,
            target=sb.target,
            public=sb.public,
            cpu=sb.cpu,
            memory=sb.memory,
            disk=sb.disk,
            built_from_image=sb.built_from_image,
        )

    @staticmethod
    def _advance(sb: _Sandbox) -> None:
        if sb.state == "starting" and sb.ready_at is not None and time.monotonic() >= sb.ready_at:
            sb.state, sb.ready_at = "started", None

    def _dto(self, sb: _Sandbox, *, list_item: bool = False) -> dict[str, Any]:
        self._advance(sb)
        dto: dict[str, Any] = {
            "id": sb.id,
            "organizationId": ORGANIZATION_ID,
            "name": sb.name,
            "user": "daytona",
            "env": dict(sb.env),
            "labels": dict(sb.labels),
            "public": sb.public,
            "networkBlockAll": False,
            "kvm": False,
            "target": sb.target,
            "cpu": sb.cpu,
            "gpu": 0,
            "memory": sb.memory,
            "disk": sb.disk,
            "state": sb.state,
            "autoStopInterval": sb.auto_stop_interval,
            "autoArchiveInterval": sb.auto_archive_interval,
            "autoDeleteInterval": sb.auto_delete_interval,
            "createdAt": _iso(sb.created_at),
            "updatedAt": _iso(sb.updated_at),
            "toolboxProxyUrl": self.toolbox_url,
        }
        if sb.snapshot is not None:
            dto["snapshot"] = sb.snapshot
        if sb.error_reason is not None:
            dto["errorReason"] = sb.error_reason
            dto["recoverable"] = False
        if list_item:
            del dto["env"], dto["kvm"]
        return dto

    def _find(self, request: web.Request) -> _Sandbox:
        key = request.match_info["sandboxId"]
        with self._lock:
            sandbox = self._sandboxes.get(key)
            if sandbox is None:
                sandbox = next((s for s in self._sandboxes.values() if s.name == key), None)
        if sandbox is None:
            raise _ApiError(404, f"Sandbox with ID or name {key} not found")
        return sandbox

    def _running(self, request: web.Request) -> _Sandbox:
        sandbox = self._find(request)
        self._advance(sandbox)
        if sandbox.state != "started":
            raise _ApiError(409, f"Sandbox is not started (state: {sandbox.state})")
        return sandbox

    def _terminate(self, sb: _Sandbox) -> None:
        for pgid in list(sb.pgids):
            _kill_group(pgid)
        sb.pgids.clear()
        for session in sb.sessions.values():
            session.pgids.clear()

    def _stop(self, sb: _Sandbox) -> None:
        self._terminate(sb)
        sb.state, sb.signed = "stopped", {}
        sb.updated_at = datetime.now(UTC)
        if sb.auto_delete_interval == 0:
            self._destroy(sb)

    def _destroy(self, sb: _Sandbox) -> None:
        self._terminate(sb)
        with self._lock:
            if self._sandboxes.pop(sb.id, None) is not None:
                self._deleted.append(sb.id)
        shutil.rmtree(sb.home, ignore_errors=True)

    # --- handlers: sandbox API ----------------------------------------------------------------

    async def _create(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        sandbox = self._new_sandbox(body, created_at=datetime.now(UTC))
        with self._lock:
            plan = None
            while self._create_plans and plan is None:
                head = self._create_plans[0]
                if head.remaining <= 0:
                    self._create_plans.pop(0)
                    continue
                head.remaining -= 1
                plan = head
            if plan is not None and plan.kind == "hang":
                sandbox.state = "starting"
            elif plan is not None and plan.kind == "error":
                sandbox.state, sandbox.error_reason = "error", plan.reason
            elif self._start_delay > 0:
                sandbox.state = "starting"
                sandbox.ready_at = time.monotonic() + self._start_delay
            self._sandboxes[sandbox.id] = sandbox
            dto = self._dto(sandbox)
        if plan is not None and plan.kind == "error":
            dto["state"] = "starting"
            dto.pop("errorReason", None)
            dto.pop("recoverable", None)
        if plan is not None and plan.kind == "slow":
            await self._sleep(plan.delay)
        return web.json_response(dto)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        wanted: dict[str, str] = {}
        if "labels" in request.query:
            try:
                wanted = _str_map(json.loads(request.query["labels"]), "labels")
            except ValueError:
                raise _ApiError(400, "labels must be a JSON object") from None
        states = set(request.query.getall("states", []))
        try:
            limit = int(request.query.get("limit", "100"))
            offset = int(request.query.get("cursor") or 0)
        except ValueError:
            raise _ApiError(400, "limit and cursor must be integers") from None
        if not 1 <= limit <= 200:
            raise _ApiError(400, "limit must be between 1 and 200")
        with self._lock:
            matching = [
                sb
                for sb in sorted(self._sandboxes.values(), key=lambda s: (s.created_at, s.id))
                if all(sb.labels.get(k) == v for k, v in wanted.items())
            ]
            for sb in matching:
                self._advance(sb)
            if states:
                matching = [sb for sb in matching if sb.state in states]
            page = matching[offset : offset + limit]
            items = [self._dto(sb, list_item=True) for sb in page]
        more = offset + limit < len(matching)
        return web.json_response(
            {"items": items, "nextCursor": str(offset + limit) if more else None}
        )

    async def _get(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        with self._lock:
            return web.json_response(self._dto(sandbox))

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        self._destroy(sandbox)
        dto = self._dto(sandbox)
        dto["state"] = "destroyed"
        return web.json_response(dto)

    async def _start(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        with self._lock:
            if sandbox.state != "started":
                sandbox.state, sandbox.error_reason = "started", None
                sandbox.preview_token = secrets.token_hex(16)
                sandbox.updated_at = datetime.now(UTC)
            return web.json_response(self._dto(sandbox))

    async def _stop_route(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        with self._lock:
            self._stop(sandbox)
            return web.json_response(self._dto(sandbox))

    async def _labels(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        labels = _str_map((await self._json(request)).get("labels"), "labels")
        with self._lock:
            sandbox.labels = labels
        return web.json_response({"labels": labels})

    async def _intervals(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        try:
            interval = int(request.match_info["interval"])
        except ValueError:
            raise _ApiError(400, "interval must be an integer") from None
        kind = request.path.rsplit("/", 2)[-2]
        with self._lock:
            if kind == "autostop":
                sandbox.auto_stop_interval = interval
            elif kind == "autoarchive":
                sandbox.auto_archive_interval = interval
            else:
                sandbox.auto_delete_interval = interval
            return web.json_response(self._dto(sandbox))

    async def _last_activity(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        with self._lock:
            sandbox.updated_at = datetime.now(UTC)
        return web.Response(status=201)

    def _port_of(self, request: web.Request) -> int:
        try:
            port = int(request.match_info["port"])
        except ValueError:
            raise _ApiError(400, "port must be an integer") from None
        if not 1 <= port <= 65535:
            raise _ApiError(400, "port out of range")
        return port

    async def _preview_url(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self._find(request), self._port_of(request)
        if self.preview_scheme == "host":
            url = f"http://{port}-{sandbox.id}.preview.localhost:{self._port}/"
        else:
            url = f"{self.base_url}/preview/{sandbox.id}/{port}/"
        return web.json_response(
            {"sandboxId": sandbox.id, "url": url, "token": sandbox.preview_token}
        )

    async def _signed_preview_url(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self._find(request), self._port_of(request)
        try:
            expires_in = int(request.query.get("expiresInSeconds", "60"))
        except ValueError:
            raise _ApiError(400, "expiresInSeconds must be an integer") from None
        if not 1 <= expires_in <= 24 * 3600:
            raise _ApiError(400, "expiresInSeconds out of range")
        token = secrets.token_hex(16)
        with self._lock:
            sandbox.signed[token] = _Signed(port, time.time() + expires_in)
        if self.preview_scheme == "host":
            url = f"http://{port}-{token}.preview.localhost:{self._port}/"
        else:
            url = f"{self.base_url}/signed/{token}/"
        body = {"sandboxId": sandbox.id, "port": port, "token": token, "url": url}
        return web.json_response(body)

    async def _expire_signed(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._find(request)
        with self._lock:
            sandbox.signed.pop(request.match_info["token"], None)
        return web.Response(status=200)

    async def _toolbox_proxy_url(self, request: web.Request) -> web.StreamResponse:
        self._find(request)
        return web.json_response({"url": self.toolbox_url})

    async def _socket_io(self, request: web.Request) -> web.StreamResponse:
        # No event gateway: the SDK falls back to polling sandbox state.
        raise _ApiError(404, "socket.io is not emulated")

    # --- handlers: preview proxy --------------------------------------------------------------

    async def _preview(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self._find(request), self._port_of(request)
        tail = request.match_info.get("tail") or "/"
        return await self._serve_preview(request, sandbox, port, tail, signed=False)

    async def _signed_preview(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        sandbox, signed = self._find_signed(token)
        tail = request.match_info.get("tail") or "/"
        return await self._serve_preview(request, sandbox, signed.port, tail, signed=True)

    async def _host_preview(
        self, request: web.Request, port: int, label: str
    ) -> web.StreamResponse:
        with self._lock:
            sandbox = self._sandboxes.get(label)
        if sandbox is not None:
            return await self._serve_preview(request, sandbox, port, request.path, signed=False)
        sandbox, signed = self._find_signed(label)
        if signed.port != port:
            raise _ApiError(404, "no such preview")
        return await self._serve_preview(request, sandbox, port, request.path, signed=True)

    def _find_signed(self, token: str) -> tuple[_Sandbox, _Signed]:
        with self._lock:
            for sandbox in self._sandboxes.values():
                signed = sandbox.signed.get(token)
                if signed is None:
                    continue
                if signed.expires_at <= time.time():
                    del sandbox.signed[token]
                    raise _ApiError(410, "signed preview URL expired")
                return sandbox, signed
        raise _ApiError(404, "no such preview")

    async def _serve_preview(
        self, request: web.Request, sandbox: _Sandbox, port: int, path: str, *, signed: bool
    ) -> web.StreamResponse:
        self._advance(sandbox)
        if sandbox.state != "started":
            raise _ApiError(410, "sandbox is not running")
        token = request.headers.get("x-daytona-preview-token")
        if not signed and not sandbox.public and token != sandbox.preview_token:
            raise _ApiError(401, "preview token missing or invalid")
        target = f"http://127.0.0.1:{port}{path}"
        if request.query_string:
            target += f"?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        assert self._client is not None
        response: web.StreamResponse | None = None
        try:
            async with self._client.request(
                request.method, target, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP or key.lower() == "content-length":
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, TimeoutError):
            if response is not None:
                raise
            raise _ApiError(502, f"no server answered on port {port}") from None

    # --- handlers: toolbox ------------------------------------------------------------------------

    def _host_path(self, sb: _Sandbox, path: str) -> Path:
        if path == HOME or path.startswith(HOME + "/"):
            relative = path[len(HOME) :].lstrip("/")
        elif path.startswith("/"):
            raise _ApiError(
                400,
                "the emulator supports only paths under /home/daytona",
                code="INVALID_FILE_PATH",
                source=_SOURCE_DAEMON,
            )
        else:
            relative = path
        home = sb.home.resolve()
        target = (home / relative).resolve()
        if not target.is_relative_to(home):
            raise _ApiError(
                400, "path escapes the sandbox", code="INVALID_FILE_PATH", source=_SOURCE_DAEMON
            )
        return target

    def _inner_path(self, sb: _Sandbox, host: Path) -> str:
        relative = host.relative_to(sb.home.resolve()).as_posix()
        if self._bwrap is None:
            return str(host)
        return HOME if relative == "." else f"{HOME}/{relative}"

    def _env(self, sb: _Sandbox, extra: dict[str, str]) -> dict[str, str]:
        env = {
            "PATH": _BASE_PATH,
            "HOME": HOME if self._bwrap else str(sb.home),
            "USER": "daytona",
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
        }
        env.update(sb.env)
        env.update(extra)
        return env

    async def _spawn(
        self,
        sb: _Sandbox,
        command: str,
        cwd: Path,
        env: dict[str, str],
        *,
        merge_stderr: bool,
        session: _Session | None = None,
    ) -> asyncio.subprocess.Process:
        if not cwd.is_dir():
            raise _ApiError(400, f"working directory {cwd.name!r} does not exist")
        if self._bwrap is not None:
            argv = [self._bwrap, *self._bwrap_mounts(sb.home)]
            argv += ["--chdir", self._inner_path(sb, cwd), "bash", "-c", command]
        else:  # no mount namespace: point the sandbox's absolute paths at its directory
            argv = ["bash", "-c", command.replace(HOME, str(sb.home))]
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        with self._lock:
            sb.pgids.add(process.pid)
            if session is not None:
                session.pgids.add(process.pid)
        return process

    def _forget_group(self, sb: _Sandbox, pgid: int) -> None:
        # Drop a group once it has no member left, so that a recycled pid is never killed.
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            with self._lock:
                sb.pgids.discard(pgid)
                for session in sb.sessions.values():
                    session.pgids.discard(pgid)

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        reader = await request.multipart()
        paths: dict[int, str] = {}
        contents: dict[int, bytes] = {}
        filenames: dict[int, str] = {}
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader) or part.name is None:
                raise _ApiError(400, "unexpected multipart part")
            match = re.fullmatch(r"files\[(\d+)\]\.(path|file)", part.name)
            if match is None:
                raise _ApiError(400, f"unexpected multipart field {part.name!r}")
            index = int(match[1])
            if match[2] == "path":
                paths[index] = await part.text()
            else:
                contents[index] = bytes(await part.read(decode=False))
                if part.filename:
                    filenames[index] = part.filename
        written = []
        for index, content in sorted(contents.items()):
            destination = paths.get(index) or filenames.get(index)
            if not destination:
                raise _ApiError(400, f"files[{index}] has no path")
            target = self._host_path(sandbox, destination)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            written.append({"path": destination, "size": len(content)})
        return web.json_response({"files": written, "errors": []})

    async def _execute(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        body = await self._json(request)
        command = body.get("command")
        if not isinstance(command, str):
            raise _ApiError(400, "command is required")
        cwd = self._host_path(sandbox, body.get("cwd") or HOME)
        timeout = body.get("timeout") or 10
        env = self._env(sandbox, _str_map(body.get("envs"), "envs"))
        process = await self._spawn(sandbox, command, cwd, env, merge_stderr=True)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            _kill_group(process.pid)
            await process.wait()
            raise _ApiError(
                408,
                "command execution timeout",
                code="PROCESS_EXECUTION_TIMEOUT",
                source=_SOURCE_DAEMON,
            ) from None
        finally:
            self._forget_group(sandbox, process.pid)
        result = output.decode("utf-8", "replace")
        exit_code = _exit_code(process.returncode or 0)
        return web.json_response({"exitCode": exit_code, "result": result})

    def _session(self, request: web.Request, sandbox: _Sandbox) -> _Session:
        session = sandbox.sessions.get(request.match_info["sessionId"])
        if session is None:
            raise _ApiError(404, "session not found", source=_SOURCE_DAEMON)
        return session

    async def _session_create(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        session_id = (await self._json(request)).get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise _ApiError(400, "sessionId is required")
        with self._lock:
            if session_id in sandbox.sessions:
                raise _ApiError(409, "session already exists")
            sandbox.sessions[session_id] = _Session(session_id)
        return web.Response(status=201)

    @staticmethod
    def _command_json(command: _Command) -> dict[str, Any]:
        body: dict[str, Any] = {"id": command.id, "command": command.command}
        if command.exit_code is not None:
            body["exitCode"] = command.exit_code
        return body

    async def _session_list(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        return web.json_response(
            [
                {
                    "sessionId": session.id,
                    "commands": [self._command_json(c) for c in session.commands.values()],
                }
                for session in list(sandbox.sessions.values())
            ]
        )

    async def _session_get(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request, self._running(request))
        commands = [self._command_json(c) for c in session.commands.values()]
        return web.json_response({"sessionId": session.id, "commands": commands})

    async def _session_delete(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        session = self._session(request, sandbox)
        with self._lock:
            for pgid in list(session.pgids):
                _kill_group(pgid)
                sandbox.pgids.discard(pgid)
            sandbox.sessions.pop(session.id, None)
        return web.Response(status=204)

    async def _session_exec(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        session = self._session(request, sandbox)
        body = await self._json(request)
        text = body.get("command")
        if not isinstance(text, str):
            raise _ApiError(400, "command is required")
        run_async = bool(body.get("runAsync") or body.get("async"))
        command = _Command(id=str(uuid.uuid4()), command=text)
        process = await self._spawn(
            sandbox, text, sandbox.home, self._env(sandbox, {}), merge_stderr=False, session=session
        )
        with self._lock:
            session.commands[command.id] = command
        task = asyncio.create_task(self._pump(sandbox, process, command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if run_async:
            return web.json_response({"cmdId": command.id}, status=202)
        await asyncio.shield(task)
        stdout = b"".join(d for p, d in command.chunks if p == _STDOUT).decode("utf-8", "replace")
        stderr = b"".join(d for p, d in command.chunks if p == _STDERR).decode("utf-8", "replace")
        output = b"".join(d for _, d in command.chunks).decode("utf-8", "replace")
        return web.json_response(
            {
                "cmdId": command.id,
                "exitCode": command.exit_code,
                "output": output,
                "stdout": stdout,
                "stderr": stderr,
            }
        )

    async def _pump(
        self, sandbox: _Sandbox, process: asyncio.subprocess.Process, command: _Command
    ) -> None:
        async def read(stream: asyncio.StreamReader | None, prefix: bytes) -> None:
            if stream is None:
                return
            while chunk := await stream.read(64 * 1024):
                async with command.cond:
                    command.chunks.append((prefix, chunk))
                    command.cond.notify_all()

        async def wait() -> None:
            code = _exit_code(await process.wait())
            async with command.cond:
                command.exit_code = code
                command.cond.notify_all()

        try:
            await asyncio.gather(
                read(process.stdout, _STDOUT), read(process.stderr, _STDERR), wait()
            )
        finally:
            async with command.cond:
                command.done = True
                if command.exit_code is None:
                    command.exit_code = -1
                command.cond.notify_all()
            self._forget_group(sandbox, process.pid)

    def _command(self, request: web.Request) -> _Command:
        session = self._session(request, self._find(request))
        command = session.commands.get(request.match_info["commandId"])
        if command is None:
            raise _ApiError(404, "command not found", source=_SOURCE_DAEMON)
        return command

    async def _session_command(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._command_json(self._command(request)))

    async def _session_logs(self, request: web.Request) -> web.StreamResponse:
        command = self._command(request)
        if request.query.get("follow") != "true":
            stdout = b"".join(d for p, d in command.chunks if p == _STDOUT)
            stderr = b"".join(d for p, d in command.chunks if p == _STDERR)
            output = b"".join(d for _, d in command.chunks)
            return web.json_response(
                {
                    "output": output.decode("utf-8", "replace"),
                    "stdout": stdout.decode("utf-8", "replace"),
                    "stderr": stderr.decode("utf-8", "replace"),
                }
            )
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            raise _ApiError(400, "follow=true needs a WebSocket")
        await ws.prepare(request)
        closed = asyncio.create_task(self._drain(ws))
        sent = 0

        async def more() -> None:
            async with command.cond:
                await command.cond.wait_for(lambda: len(command.chunks) > sent or command.done)

        try:
            while True:
                waiter = asyncio.create_task(more())
                await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
                if not waiter.done():  # the client went away
                    waiter.cancel()
                    return ws
                pending, finished = command.chunks[sent:], command.done
                for prefix, data in pending:
                    await ws.send_bytes(prefix + data)
                sent += len(pending)
                if finished and sent == len(command.chunks):
                    break
        except (ConnectionError, RuntimeError):
            return ws
        finally:
            closed.cancel()
        await ws.close(code=1000)
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse) -> None:
        async for _ in ws:  # answers pings; ends when the client goes away
            pass

    async def _git_clone(self, request: web.Request) -> web.StreamResponse:
        sandbox = self._running(request)
        body = await self._json(request)
        url, path = body.get("url"), body.get("path")
        if not isinstance(url, str) or not isinstance(path, str):
            raise _ApiError(400, "url and path are required")
        branch, commit_id = body.get("branch"), body.get("commit_id")
        username, password = body.get("username"), body.get("password")
        with self._lock:
            self._git_clones.append(
                GitCloneRecord(sandbox.id, url, path, branch, commit_id, username, password)
            )
        destination = self._host_path(sandbox, path)
        if destination.exists() and any(destination.iterdir()):
            raise _ApiError(400, "destination is not empty", code="GIT_CLONE_FAILED")
        argv = ["git", "clone", "--quiet"]
        if branch:
            argv += ["--branch", branch]
        if isinstance(body.get("depth"), int):
            argv += ["--depth", str(body["depth"])]
        inner = self._inner_path(sandbox, destination)
        script = shlex.join([*argv, "--", url, inner])
        if commit_id:
            script += " && " + shlex.join(["git", "-C", inner, "checkout", "--quiet", commit_id])
        env = {"GIT_TERMINAL_PROMPT": "0"}
        if username is not None or password is not None:
            env |= {"GIT_ASKPASS": str(self._askpass()), "EMU_GIT_USERNAME": username or ""}
            env["EMU_GIT_PASSWORD"] = password or ""
        process = await self._spawn(
            sandbox, script, sandbox.home, self._env(sandbox, env), merge_stderr=True
        )
        try:
            await asyncio.wait_for(process.communicate(), 300)
        except TimeoutError:
            _kill_group(process.pid)
            raise _ApiError(504, "git clone timed out") from None
        finally:
            self._forget_group(sandbox, process.pid)
        if process.returncode != 0:
            raise _ApiError(400, "git clone failed", code="GIT_CLONE_FAILED", source=_SOURCE_DAEMON)
        return web.Response(status=200)

    def _askpass(self) -> Path:
        assert self._root is not None
        script = self._root / "askpass.sh"
        if not script.exists():
            script.write_text(
                '#!/bin/sh\ncase "$1" in\n  Username*) printf "%s" "$EMU_GIT_USERNAME" ;;\n'
                '  *) printf "%s" "$EMU_GIT_PASSWORD" ;;\nesac\n'
            )
            script.chmod(0o700)
        return script


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Daytona API emulator.")
    parser.add_argument("--port", type=int, default=3986)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--preview-scheme", choices=["path", "host"], default="path")
    parser.add_argument("--no-bwrap", action="store_true", help="run commands without bubblewrap")
    args = parser.parse_args(argv)
    emulator = DaytonaEmulator(
        port=args.port,
        api_key=args.api_key,
        preview_scheme=args.preview_scheme,
        use_bwrap=False if args.no_bwrap else None,
    )
    emulator.start()
    print(f"DAYTONA_API_URL={emulator.api_url}")
    print(f"DAYTONA_API_KEY={emulator.api_key}")
    print(f"commands run {'in bubblewrap' if emulator.uses_bwrap else 'without bubblewrap'}")
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    try:
        done.wait()
    finally:
        emulator.stop()


if __name__ == "__main__":
    main()
