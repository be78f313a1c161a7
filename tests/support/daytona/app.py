"""The emulator itself: an aiohttp server on 127.0.0.1 with the API key check, fault injection
and call recording in front of the API surfaces (`sandboxes`, `preview`, `toolbox`, `sessions`).

The server runs on its own event loop in a background thread, so it serves synchronous and
asynchronous tests alike. `python -m tests.support.daytona --port 3986` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
from aiohttp import web

from tests.support.daytona import routes
from tests.support.daytona.faults import FaultInjection, abort_connection
from tests.support.daytona.preview import PreviewApi
from tests.support.daytona.sandboxes import SandboxApi
from tests.support.daytona.sessions import SessionApi
from tests.support.daytona.state import (
    ApiError,
    GitCloneRecord,
    Handler,
    RecordedCall,
    SandboxView,
    State,
)
from tests.support.daytona.toolbox import ToolboxApi, detect_bwrap


class DaytonaEmulator(FaultInjection):
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
        super().__init__()
        self._requested_port = port
        self.api_key = api_key or f"emu-{secrets.token_hex(12)}"
        self.preview_scheme = preview_scheme
        self.target = target
        self._use_bwrap = use_bwrap
        self._state = State(preview_scheme=preview_scheme, target=target)
        self._sandbox_api = SandboxApi(self._state, self)
        self._preview_api = PreviewApi(self._state)
        toolbox = ToolboxApi(self._state)
        self._handlers: dict[str, Handler] = {
            **self._sandbox_api.handlers(),
            **self._preview_api.handlers(),
            **toolbox.handlers(),
            **SessionApi(toolbox).handlers(),
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> DaytonaEmulator:
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        root = Path(tempfile.mkdtemp(prefix="daytona-emulator-"))
        self._state.root = root
        self._state.bwrap = detect_bwrap(root, self._use_bwrap)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self._requested_port))
        self._state.port = sock.getsockname()[1]
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
            shutil.rmtree(root, ignore_errors=True)
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
        with self._state.lock:
            for sandbox in self._state.sandboxes.values():
                self._state.terminate(sandbox)
        if self._state.root is not None:
            shutil.rmtree(self._state.root, ignore_errors=True)
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
        return self._state.port

    @property
    def base_url(self) -> str:
        return self._state.base_url

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/api"

    @property
    def toolbox_url(self) -> str:
        return self._state.toolbox_url

    @property
    def uses_bwrap(self) -> bool:
        return self._state.bwrap is not None

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

    # --- recording and state (thread-safe) -----------------------------------------------------

    @property
    def calls(self) -> list[RecordedCall]:
        with self._state.lock:
            return list(self._state.calls)

    def count(self, route: str) -> int:
        routes.check_route(route)
        with self._state.lock:
            return sum(1 for call in self._state.calls if call.route == route)

    def counts(self, *, api_only: bool = False) -> dict[str, int]:
        """Calls per route; `api_only` leaves out preview traffic and socket.io attempts."""
        with self._state.lock:
            counter = Counter(
                call.route
                for call in self._state.calls
                if not api_only or call.route in routes.API_ROUTES
            )
        return dict(sorted(counter.items()))

    def reset_calls(self) -> None:
        with self._state.lock:
            self._state.calls.clear()

    @property
    def sandboxes(self) -> dict[str, SandboxView]:
        """Live sandboxes (deleted ones are gone from here, see `deleted`)."""
        with self._state.lock:
            return {sid: self._state.view(sb) for sid, sb in self._state.sandboxes.items()}

    @property
    def deleted(self) -> list[str]:
        with self._state.lock:
            return list(self._state.deleted)

    @property
    def git_clones(self) -> list[GitCloneRecord]:
        with self._state.lock:
            return list(self._state.git_clones)

    def preview_activity(self, sandbox_id: str) -> int:
        """How many times preview traffic updated the sandbox's last activity (as Daytona's
        proxy does for each request, unless told to skip it)."""
        with self._state.lock:
            return self._preview_api.activity[sandbox_id]

    def sandbox_home(self, sandbox_id: str) -> Path:
        """The host directory that the sandbox sees as /home/daytona."""
        with self._state.lock:
            return self._state.sandboxes[sandbox_id].home

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
        sandbox = self._sandbox_api.new_sandbox(
            {"labels": labels, "autoStopInterval": auto_stop_interval},
            created_at=moment,
        )
        sandbox.state, sandbox.error_reason = state, error_reason
        sandbox.auto_delete_interval = auto_delete_interval
        with self._state.lock:
            self._state.sandboxes[sandbox.id] = sandbox
        return sandbox.id

    def archive_sandbox(self, sandbox_id: str) -> None:
        """Stop and archive a sandbox (Daytona's auto-archive): `archived`, nothing runs."""
        with self._state.lock:
            sandbox = self._state.sandboxes[sandbox_id]
            self._state.terminate(sandbox)
            sandbox.state = "archived"

    def stop_sandbox(self, sandbox_id: str) -> None:
        """Stop a sandbox as Daytona's auto-stop would (ephemeral ones are deleted)."""
        with self._state.lock:
            sandbox = self._state.sandboxes[sandbox_id]
            self._state.stop(sandbox)

    # --- the server ---------------------------------------------------------------------------

    async def _astart(self, sock: socket.socket) -> None:
        self._state.stopping = asyncio.Event()
        self._state.client = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            trust_env=False,
        )
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        for key, handler in self._handlers.items():
            method, path = key.split(" ", 1)
            app.router.add_route(method, path, handler)
        for path, handler in self._preview_api.proxy_routes():
            app.router.add_route("*", path, handler)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def _astop(self) -> None:
        state = self._state
        assert state.stopping is not None
        state.stopping.set()
        with state.lock:
            sandboxes = list(state.sandboxes.values())
        for sandbox in sandboxes:
            state.terminate(sandbox)
        if self._runner is not None:
            await self._runner.cleanup()
        for task in list(state.tasks):
            task.cancel()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=5)
        if state.client is not None:
            await state.client.close()

    @staticmethod
    def _route_key(request: web.Request) -> str:
        route = request.match_info.route
        resource = route.resource
        if resource is None or request.match_info.http_exception is not None:
            return routes.UNMATCHED
        canonical = re.sub(r"\{(\w+):[^}]*\}", r"{\1}", resource.canonical)
        method = "*" if route.method == "*" else request.method
        return f"{method} {canonical}"

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host_match = self._preview_api.host_match(request.host)
        route = routes.PREVIEW_HOST if host_match else self._route_key(request)
        with self._state.lock:
            self._state.calls.append(
                RecordedCall(request.method, route, request.path, time.monotonic())
            )
        delay, fault = self.take_fault(route)
        try:
            if delay:
                await self._state.sleep(delay)
            if fault is not None and fault.kind == "reset":
                return abort_connection(request)
            if fault is not None:
                raise fault.error()
            if host_match is not None:
                return await self._preview_api.host_preview(
                    request, int(host_match[1]), host_match[2]
                )
            if route in routes.API_ROUTES and request.headers.get("Authorization") != (
                f"Bearer {self.api_key}"
            ):
                raise ApiError(401, "Unauthorized")
            return await handler(request)
        except ApiError as err:
            return err.response(request)


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
