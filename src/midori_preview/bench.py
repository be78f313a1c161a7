"""`midori-preview bench`: time to a working preview, heartbeat/status throughput and memory,
measured against a real server process. Prints a Markdown table (docs/BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

EXAMPLE = {
    "name": "บ้านกาแฟ Baan Kafae",
    "tagline": "Slow coffee from the hills of Chiang Rai",
    "language": "th",
    "sections": [{"type": "about", "title": "About us", "body": "A six-seat bar in Nimman."}],
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _wait_ready(client: httpx.AsyncClient, base: str) -> None:
    for _ in range(300):
        try:
            if (await client.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise RuntimeError("server did not start")


async def _time_to_preview(
    client: httpx.AsyncClient, base: str, body: dict[str, Any], user: str
) -> float:
    headers = {"X-User-Id": user}
    started = time.perf_counter()
    res = await client.post(f"{base}/api/preview/daytona", json=body, headers=headers)
    res.raise_for_status()
    sandbox_id = res.json()["sandboxId"]
    while True:
        status = (
            await client.get(f"{base}/api/preview/daytona/{sandbox_id}", headers=headers)
        ).json()
        if status["status"] == "running":
            break
        if status["status"] in ("error", "stopped"):
            raise RuntimeError(f"preview failed: {status.get('error')}")
        await asyncio.sleep(0.01)
    url = status["previewUrl"]
    host = httpx.URL(url).host
    page = await client.get(
        f"{base}/",
        headers={
            "Host": f"{host}:{httpx.URL(base).port}",
            "x-daytona-preview-token": status["previewToken"],
        },
    )
    assert page.status_code == 200, page.status_code
    elapsed = time.perf_counter() - started
    await client.post(
        f"{base}/api/preview/daytona/stop", json={"sandboxId": sandbox_id}, headers=headers
    )
    return elapsed


async def _until_running(client: httpx.AsyncClient, base: str, sid: str, user: str) -> None:
    url = f"{base}/api/preview/daytona/{sid}"
    for _ in range(3000):
        if (await client.get(url, headers={"X-User-Id": user})).json()["status"] == "running":
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("preview did not start")


async def _load(
    client: httpx.AsyncClient, base: str, make: Any, total: int, concurrency: int
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            t = time.perf_counter()
            res = await make(i)
            assert res.status_code == 200, res.text
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


WRK_SCRIPT = """
local pairs = {%s}
local i = 0
request = function()
  i = (i %% #pairs) + 1
  local p = pairs[i]
  wrk.headers["X-User-Id"] = p[1]
  wrk.headers["Content-Type"] = "application/json"
  if p[3] == "heartbeat" then
    return wrk.format("POST", "/api/preview/daytona/heartbeat", nil,
      '{"sandboxId":"' .. p[2] .. '","visible":true}')
  elseif p[3] == "status" then
    return wrk.format("GET", "/api/preview/daytona/status?sandboxId=" .. p[2])
  end
  return wrk.format("GET", "/healthz")
end
"""


def _wrk(base: str, kind: str, users: list[str], ids: list[str], seconds: int, conns: int) -> str:
    """Throughput with wrk (a C load generator: the client does not compete for the GIL)."""
    pairs = ",".join(f'{{"{u}","{i}","{kind}"}}' for u, i in zip(users, ids, strict=True))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % pairs)
    out = subprocess.run(
        ["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", f.name, base],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    os.unlink(f.name)
    return out


def _wrk_row(label: str, out: str, seconds: int, conns: int) -> list[str]:
    rate = next(line.split()[1] for line in out.splitlines() if line.startswith("Requests/sec"))
    lat = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line.strip().startswith(("50%", "99%"))
    }
    errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "errors" in line]
    detail = f"p50 {lat.get('50%')}, p99 {lat.get('99%')}" + (f"; {errors}" if errors else "")
    return [
        f"{label} throughput (wrk)",
        f"{float(rate):.0f} req/s",
        detail,
        f"{seconds}s, {conns} conns",
    ]


async def run(runs: int, requests: int, concurrency: int, env: dict[str, str]) -> list[list[str]]:
    port = _free_port()
    data = tempfile.mkdtemp(prefix="midori-bench-")
    server_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "DATA_DIR": data,
        "LOG_LEVEL": "WARNING",
        "CREATE_RATE_PER_MINUTE": "100000",
        "PREVIEW_DEPLOYMENT": f"bench{port}",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - a harness, started once
        [sys.executable, "-m", "midori_preview.cli", "serve"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    rows: list[list[str]] = []
    try:
        limits = httpx.Limits(max_connections=concurrency * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
            await _wait_ready(client, base)
            rss_idle = _rss_mb(proc.pid)
            for label, body in (
                ("static template (promptJson)", {"projectId": "b", "promptJson": EXAMPLE}),
                (
                    "vite template (1st run builds with npm, then the build cache)",
                    {"projectId": "b", "promptJson": EXAMPLE, "template": "vite"},
                ),
                (
                    "files + python http.server",
                    {"projectId": "b", "files": [{"path": "index.html", "content": "<h1>hi</h1>"}]},
                ),
            ):
                times = [
                    await _time_to_preview(client, base, {**body, "projectId": f"b{i}"}, f"u{i}")
                    for i in range(runs)
                ]
                rows.append(
                    [
                        f"time to first 200: {label}",
                        f"{statistics.median(times) * 1000:.0f} ms",
                        f"p95 {_pct(times, 0.95) * 1000:.0f} ms",
                        f"{runs} runs",
                    ]
                )
            users = [f"hb{i}" for i in range(concurrency)]
            ids = []
            for user in users:
                res = await client.post(
                    f"{base}/api/preview/daytona",
                    json={"projectId": "hb", "files": [{"path": "index.html", "content": "x"}]},
                    headers={"X-User-Id": user},
                )
                ids.append(res.json()["sandboxId"])
            for user, sid in zip(users, ids, strict=True):
                await _until_running(client, base, sid, user)

            async def heartbeat(i: int) -> httpx.Response:
                k = i % len(users)
                return await client.post(
                    f"{base}/api/preview/daytona/heartbeat",
                    json={"sandboxId": ids[k], "visible": True},
                    headers={"X-User-Id": users[k]},
                )

            async def status(i: int) -> httpx.Response:
                k = i % len(users)
                return await client.get(
                    f"{base}/api/preview/daytona/status?sandboxId={ids[k]}",
                    headers={"X-User-Id": users[k]},
                )

            async def health(i: int) -> httpx.Response:
                return await client.get(f"{base}/healthz")

            if shutil.which("wrk"):
                for label, kind in (
                    ("healthz (baseline)", "healthz"),
                    ("heartbeat", "heartbeat"),
                    ("status", "status"),
                ):
                    out = await asyncio.to_thread(_wrk, base, kind, users, ids, 5, concurrency)
                    rows.append(_wrk_row(label, out, 5, concurrency))
            for label, make in (
                ("healthz (baseline)", health),
                ("heartbeat", heartbeat),
                ("status", status),
            ):
                rate, lat = await _load(client, base, make, requests, concurrency)
                rows.append(
                    [
                        f"{label} throughput",
                        f"{rate:.0f} req/s",
                        f"p50 {_pct(lat, 0.5) * 1000:.1f} ms, p99 {_pct(lat, 0.99) * 1000:.1f} ms",
                        f"{requests} req, {concurrency} conc.",
                    ]
                )
            rows.append(
                [
                    "server RSS idle → after load",
                    f"{rss_idle:.0f} MB",
                    f"{_rss_mb(proc.pid):.0f} MB",
                    f"{len(ids)} previews running",
                ]
            )
            for user, sid in zip(users, ids, strict=True):
                await client.post(
                    f"{base}/api/preview/daytona/stop",
                    json={"sandboxId": sid},
                    headers={"X-User-Id": user},
                )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return rows


def main(
    runs: int = 5, requests: int = 2000, concurrency: int = 16, backend: str = "embedded"
) -> None:
    env: dict[str, str] = {}
    if backend == "pg":
        env = {
            "DATABASE_URL": os.environ.get(
                "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
            ),
            "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        }
    rows = asyncio.run(run(runs, requests, concurrency, env))
    print(f"backend: {backend} (1 uvicorn worker, {os.cpu_count()} cores)")
    print("| what | result | detail | sample |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()
