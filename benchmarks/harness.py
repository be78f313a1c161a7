"""The benchmark's harness: the service as its own process, its HTTP client, small statistics."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from redis import asyncio as aioredis

API = "/api/preview/daytona"
PG_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


class BenchError(RuntimeError):
    """The service did not do what the benchmark needs (a failed preview, an error answer)."""


@dataclass
class Server:
    base: str
    port: int
    pid: int
    client: httpx.AsyncClient
    data_dir: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ok(res: httpx.Response, what: str) -> httpx.Response:
    if res.status_code >= 400:
        raise BenchError(f"{what}: HTTP {res.status_code}: {res.text[:300]}")
    return res


def backend_env(backend: str) -> dict[str, str]:
    if backend == "pg":
        return {"DATABASE_URL": PG_URL, "REDIS_URL": REDIS_URL}
    return {}


async def drop_keys(deployment: str) -> None:
    """Remove a run's keys (its deployment's prefix) from the shared Redis."""
    r = aioredis.Redis.from_url(REDIS_URL)
    try:
        async for key in r.scan_iter(match=f"mp:{deployment}:*", count=1000):
            await r.unlink(key)
    finally:
        await r.aclose()


@asynccontextmanager
async def served(env: dict[str, str]) -> AsyncIterator[Server]:
    """The service as its own process (1 uvicorn worker) on a free port, with a client. A
    server that exits before answering (its free port taken meanwhile on this shared machine)
    is started again on another port, twice at most."""
    data_dir = Path(tempfile.mkdtemp(prefix="midori-bench-"))
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client:
        for attempt in range(3):
            port = free_port()
            proc = _start(env, port, data_dir)
            try:
                server = Server(f"http://127.0.0.1:{port}", port, proc.pid, client, data_dir)
                try:
                    await _wait_ready(server, proc)
                except BenchError:
                    if proc.poll() is None or attempt == 2:
                        raise
                    continue
                yield server
                return
            finally:
                proc.terminate()
                proc.wait(timeout=30)
                await drop_keys(f"bench{port}")


def _start(env: dict[str, str], port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    server_env = {
        **os.environ,
        "PORT": str(port),
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        "CREATE_RATE_PER_MINUTE": "100000",
        "UPDATE_RATE_PER_MINUTE": "100000",
        "MAX_CONCURRENT_SANDBOXES_PER_USER": "100000",
        "DAILY_USAGE_CAP_SECONDS": "10000000",
        "PREVIEW_DEPLOYMENT": f"bench{port}",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "midori_preview.cli", "serve"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _wait_ready(server: Server, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90  # imports alone take seconds on a busy machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with {proc.returncode} before it answered")
        try:
            if (await server.client.get(f"{server.base}/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise BenchError("the server did not answer /healthz within 90 s")


async def until_running(server: Server, sandbox_id: str, user: str) -> dict[str, Any]:
    """Poll the status every 5 ms until the preview runs; its status."""
    url, headers = f"{server.base}{API}/{sandbox_id}", {"X-User-Id": user}
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status: dict[str, Any] = ok(await server.client.get(url, headers=headers), "status").json()
        if status["status"] == "running":
            return status
        if status["status"] in ("error", "stopped"):
            raise BenchError(f"preview {sandbox_id} failed: {status.get('error')}")
        await asyncio.sleep(0.005)
    raise BenchError(f"preview {sandbox_id} did not start within 300 s")


async def create(server: Server, body: dict[str, Any], user: str) -> str:
    res = await server.client.post(f"{server.base}{API}", json=body, headers={"X-User-Id": user})
    return str(ok(res, "create").json()["sandboxId"])


async def stop(server: Server, sandbox_id: str, user: str) -> None:
    res = await server.client.post(
        f"{server.base}{API}/stop", json={"sandboxId": sandbox_id}, headers={"X-User-Id": user}
    )
    ok(res, "stop")


async def first_200(server: Server, status: dict[str, Any]) -> None:
    """The preview's page through the service's preview host answers 200."""
    host = httpx.URL(status["previewUrl"]).host
    headers = {"Host": f"{host}:{server.port}", "x-daytona-preview-token": status["previewToken"]}
    deadline = time.monotonic() + 60
    while True:
        page = await server.client.get(f"{server.base}/", headers=headers)
        if page.status_code == 200:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the preview answered {page.status_code}, not 200")
        await asyncio.sleep(0.005)
