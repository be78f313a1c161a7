"""Helpers for the quota, usage and reaper tests: create/heartbeat/stop through the HTTP API, read
the usage ledger, run several app instances against one Postgres + Redis, run a private Redis
server that a test may flush or kill, and capture structlog lines."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from structlog.testing import capture_logs

from midori_preview.bootstrap import build_provider
from midori_preview.db.models import UsageLedger
from midori_preview.settings import Settings
from tests.conftest import Running, running_app, user_headers
from tests.support.clock import ManualClock
from tests.support.servers import free_port

API = "/api/preview/daytona"


def body(project: str = "site", content: str = "<h1>hi</h1>", **extra: Any) -> dict[str, Any]:
    """A `files` create body; a different `content` is a different source."""
    return {"projectId": project, "files": [{"path": "index.html", "content": content}], **extra}


async def create(
    running: Running,
    project: str = "site",
    *,
    user: str = "alice",
    content: str = "<h1>hi</h1>",
    **extra: Any,
) -> httpx.Response:
    return await running.client.post(
        API, json=body(project, content, **extra), headers=user_headers(user)
    )


async def create_running(
    running: Running,
    project: str = "site",
    *,
    user: str = "alice",
    content: str = "<h1>hi</h1>",
    **extra: Any,
) -> str:
    """Create a preview and wait until it runs (real sandbox); its sandbox id."""
    res = await create(running, project, user=user, content=content, **extra)
    assert res.status_code == 202, res.text
    sandbox_id = str(res.json()["sandboxId"])
    await running.wait_until(sandbox_id, "running", user=user)
    return sandbox_id


async def heartbeat(
    running: Running, sandbox_id: str, *, user: str = "alice", visible: bool = True
) -> httpx.Response:
    return await running.client.post(
        f"{API}/heartbeat",
        json={"sandboxId": sandbox_id, "visible": visible},
        headers=user_headers(user),
    )


async def stop(running: Running, sandbox_id: str, *, user: str = "alice") -> httpx.Response:
    return await running.client.post(
        f"{API}/stop", json={"sandboxId": sandbox_id}, headers=user_headers(user)
    )


async def status(running: Running, sandbox_id: str, *, user: str = "alice") -> dict[str, Any]:
    res = await running.client.get(
        f"{API}/status", params={"sandboxId": sandbox_id}, headers=user_headers(user)
    )
    assert res.status_code == 200, res.text
    return dict(res.json())


async def ledger(running: Running) -> dict[tuple[str, str, str], int]:
    """The usage ledger in Postgres/SQLite: (user, day, project) → seconds, once the heartbeats
    queued in Redis are written behind (as the scheduler's flush job does)."""
    await running.service.flush_heartbeats()
    async with running.services.db.database.writes() as s:
        rows = await s.scalars(select(UsageLedger))
        return {(r.user_id, r.day, r.project_id): int(r.seconds) for r in rows}


async def ledger_total(running: Running, user: str = "alice") -> int:
    return sum(v for (u, _, _), v in (await ledger(running)).items() if u == user)


async def mirror(running: Running, user: str, day: str) -> int | None:
    """The Redis mirror of a user's usage on `day` (None when the key is missing)."""
    value = await running.services.redis.get(running.services.quota.usage_key(user, day))
    return None if value is None else int(value)


async def row(running: Running, sandbox_id: str) -> Any:
    """The sandbox's row, once the heartbeats queued in Redis are written behind."""
    await running.service.flush_heartbeats()
    found = await running.services.db.sandboxes.get(sandbox_id)
    assert found is not None
    return found


@asynccontextmanager
async def replicas(
    settings: Settings, clock: ManualClock, n: int = 2
) -> AsyncIterator[list[Running]]:
    """`n` app instances (replicas) sharing one settings object — so one Postgres, one Redis and
    one deployment — and one sandbox provider, as Daytona would be shared by real replicas."""
    provider = build_provider(settings, clock)
    try:
        async with contextlib.AsyncExitStack() as stack:
            apps = [
                await stack.enter_async_context(
                    running_app(settings, clock=clock, provider=provider)
                )
                for _ in range(n)
            ]
            yield apps
    finally:
        await provider.aclose()


@contextlib.contextmanager
def captured_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """structlog entries emitted inside the block (the app's level filter still applies: build
    the app with log_level="DEBUG" to see debug and info lines)."""
    with capture_logs() as entries:
        yield entries


def events(
    entries: list[MutableMapping[str, Any]], name: str, **fields: Any
) -> list[MutableMapping[str, Any]]:
    return [
        e
        for e in entries
        if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
    ]


class PrivateRedis:
    """A redis-server of this test's own, so that the test may FLUSHALL it or kill it (an outage)
    without touching the Redis that other tests share."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            await asyncio.sleep(0.01)  # wall time: waiting for a real server to listen
        raise RuntimeError("redis-server did not start")

    async def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait)
            self.proc = None
