"""What the emulator knows: its sandboxes and the calls it served, shared by every API surface.

Handlers run on the emulator's own event loop; tests read and configure from any thread, so every
read or write of shared state happens under `State.lock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web

HOME = "/home/daytona"
ORGANIZATION_ID = "emulated-organization"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDOUT = b"\x01\x01\x01"
STDERR = b"\x02\x02\x02"
SOURCE_API = "DAYTONA_API"
SOURCE_DAEMON = "DAYTONA_DAEMON"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- what tests can read -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedCall:
    method: str
    route: str  # one of the route keys of `routes`
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


# --- internal state ------------------------------------------------------------------------------


class ApiError(Exception):
    """An error answer in Daytona's shapes. The API (NestJS, `AllExceptionsFilter`) answers
    `{path, timestamp, statusCode, error, message}` — no `code`, no `source`; the toolbox daemon
    and the preview proxy (Go, common-go `ErrorResponse`) answer `{statusCode, message, code?,
    timestamp, path, method}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        source: str = SOURCE_API,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.source = status, message, code, source
        self.headers = headers or {}

    def response(self, request: web.Request) -> web.Response:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        body: dict[str, Any]
        if request.path.startswith("/api/"):
            reason = HTTPStatus(self.status).phrase if self.status in _KNOWN else "Error"
            body = {"path": request.path_qs, "timestamp": stamp, "statusCode": self.status,
                    "error": reason, "message": self.message}  # fmt: skip
        else:
            body = {"statusCode": self.status, "message": self.message}
            if self.code is not None:
                body["code"] = self.code
            body |= {"timestamp": stamp, "path": request.path, "method": request.method}
        return web.json_response(body, status=self.status, headers=self.headers)


_KNOWN = frozenset(int(s) for s in HTTPStatus)


@dataclass(eq=False)
class Command:
    id: str
    command: str
    exit_code: int | None = None
    chunks: list[tuple[bytes, bytes]] = field(default_factory=list)  # (prefix, data)
    done: bool = False
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)


@dataclass(eq=False)
class Session:
    id: str
    commands: dict[str, Command] = field(default_factory=dict)
    pgids: set[int] = field(default_factory=set)


@dataclass(eq=False)
class Signed:
    port: int
    expires_at: float  # time.time()


@dataclass(eq=False)
class Sandbox:
    id: str
    name: str
    home: Path  # the sandbox's /home/daytona on this host
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
    # (monotonic time, state) still to come, in order: `creating` → `pulling_snapshot` → …
    schedule: list[tuple[float, str]] = field(default_factory=list)
    busy_seconds: float = 0.0  # a fault: its first delete finds a state change in progress…
    busy_until: float | None = None  # …until then (monotonic)
    listed_from: float = 0.0  # monotonic time from which listings show it (eventual consistency)
    built_from_image: bool = False
    preview_token: str = field(default_factory=lambda: secrets.token_hex(16))
    signed: dict[str, Signed] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    pgids: set[int] = field(default_factory=set)

    @property
    def rootfs(self) -> Path:
        """Where the rest of the sandbox's file system lives on this host (files written outside
        /home/daytona: see files.py)."""
        return self.home.with_name(self.home.name + ".rootfs")


# Daytona's states with a change in progress (`pending` on its side): deletes answer 409.
TRANSITIONAL = frozenset(
    {"creating", "restoring", "destroying", "starting", "stopping", "pending_build",
     "building_snapshot", "pulling_snapshot", "archiving", "resizing", "snapshotting",
     "forking", "pausing", "resuming"}
)  # fmt: skip


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def kill_group(pgid: int) -> bool:
    """SIGKILL a process group; False when it has no member left."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ApiError(400, f"{what} must be an object of string values")
    return dict(value)


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise ApiError(400, "invalid JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "JSON body must be an object")
    return body


def port_of(request: web.Request) -> int:
    try:
        port = int(request.match_info["port"])
    except ValueError:
        raise ApiError(400, "port must be an integer") from None
    if not 1 <= port <= 65535:
        raise ApiError(400, "port out of range")
    return port


class State:
    """The emulator's sandboxes, recordings and server resources, shared by its API surfaces."""

    def __init__(self, *, preview_scheme: Literal["path", "host"], target: str) -> None:
        self.preview_scheme = preview_scheme
        self.target = target
        self.lock = threading.RLock()
        self.sandboxes: dict[str, Sandbox] = {}
        self.deleted: list[str] = []
        self.calls: list[RecordedCall] = []
        self.git_clones: list[GitCloneRecord] = []
        self.port = 0
        self.root: Path | None = None
        self.bwrap: str | None = None  # the bwrap executable when commands run inside it
        self.client: aiohttp.ClientSession | None = None
        self.stopping: asyncio.Event | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def toolbox_url(self) -> str:
        return f"{self.base_url}/toolbox"

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the emulator stops meanwhile."""
        assert self.stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def find(self, request: web.Request) -> Sandbox:
        key = request.match_info["sandboxId"]
        with self.lock:
            sandbox = self.sandboxes.get(key)
            if sandbox is None:
                sandbox = next((s for s in self.sandboxes.values() if s.name == key), None)
        if sandbox is not None:
            self.advance(sandbox)  # a `destroying` one may be gone by now
        if sandbox is None or sandbox.state == "destroyed":
            raise ApiError(404, f"Sandbox with ID or name {key} not found")
        return sandbox

    def pending(self, sb: Sandbox) -> bool:
        """Whether a state change is in progress (Daytona's `pending`): a delete answers 409."""
        self.advance(sb)
        busy = sb.busy_until is not None and time.monotonic() < sb.busy_until
        return busy or (sb.state in TRANSITIONAL and sb.state != "pending_build")

    def running(self, request: web.Request) -> Sandbox:
        sandbox = self.find(request)
        self.advance(sandbox)
        if sandbox.state != "started":
            raise ApiError(409, f"Sandbox is not started (state: {sandbox.state})")
        return sandbox

    def advance(self, sb: Sandbox) -> None:
        """Move the sandbox along its schedule (`destroyed` removes it)."""
        now = time.monotonic()
        with self.lock:
            while sb.schedule and sb.schedule[0][0] <= now:
                _, sb.state = sb.schedule.pop(0)
                sb.updated_at = datetime.now(UTC)
            if sb.state == "destroyed":
                self.destroy(sb)

    def view(self, sb: Sandbox) -> SandboxView:
        self.advance(sb)
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

    def terminate(self, sb: Sandbox) -> None:
        """Kill every process the sandbox runs."""
        for pgid in list(sb.pgids):
            kill_group(pgid)
        sb.pgids.clear()
        for session in sb.sessions.values():
            session.pgids.clear()

    def stop(self, sb: Sandbox) -> None:
        """Stop a sandbox as Daytona does (one with auto-delete 0 is deleted at once)."""
        self.terminate(sb)
        sb.state, sb.signed = "stopped", {}
        sb.updated_at = datetime.now(UTC)
        if sb.auto_delete_interval == 0:
            self.destroy(sb)

    def destroy(self, sb: Sandbox) -> None:
        self.terminate(sb)
        with self.lock:
            if self.sandboxes.pop(sb.id, None) is not None:
                self.deleted.append(sb.id)
        shutil.rmtree(sb.home, ignore_errors=True)
        shutil.rmtree(sb.rootfs, ignore_errors=True)
