"""`make bench`: time to a working preview, heartbeat/status throughput and memory, measured
against a real server process. Prints a Markdown table (docs/BENCHMARKS.md).

Run with the project's virtualenv: `.venv/bin/python benchmarks/bench.py --help`. Not part of the
package: a measuring harness, not something the service runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

API = "/api/preview/daytona"
EXAMPLE = {
    "name": "บ้านกาแฟ Baan Kafae",
    "tagline": "Slow coffee from the hills of Chiang Rai",
    "language": "th",
    "sections": [{"type": "about", "title": "About us", "body": "A six-seat bar in Nimman."}],
}
PREVIEWS = (
    ("static template (promptJson)", {"promptJson": EXAMPLE}),
    (
        "vite template (1st run builds with npm, then the build cache)",
        {"promptJson": EXAMPLE, "template": "vite"},
    ),
    ("files + python http.server", {"files": [{"path": "index.html", "content": "<h1>hi</h1>"}]}),
)
WRK_SECONDS = 5
Row = list[str]


class BenchError(RuntimeError):
    """The service did not do what the benchmark needs (a failed preview, an error answer)."""


@dataclass
class Server:
    base: str
    pid: int
    client: httpx.AsyncClient


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


def _ok(res: httpx.Response, what: str) -> httpx.Response:
    if res.status_code >= 400:
        raise BenchError(f"{what}: HTTP {res.status_code}: {res.text[:300]}")
    return res


@asynccontextmanager
async def served(env: dict[str, str], concurrency: int) -> AsyncIterator[Server]:
    """The service as its own process (1 uvicorn worker) on a free port, with a client."""
    port = _free_port()
    server_env = {
        **os.environ,
        **env,
        "PORT": str(port),
        "DATA_DIR": tempfile.mkdtemp(prefix="midori-bench-"),
        "LOG_LEVEL": "WARNING",
        "CREATE_RATE_PER_MINUTE": "100000",
        "PREVIEW_DEPLOYMENT": f"bench{port}",
    }
    proc = subprocess.Popen(  # noqa: ASYNC220 - a harness, started once
        [sys.executable, "-m", "midori_preview.cli", "serve"],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=None if os.environ.get("BENCH_SERVER_LOG") else subprocess.DEVNULL,
    )
    try:
        limits = httpx.Limits(max_connections=concurrency * 2)
        async with httpx.AsyncClient(timeout=60, limits=limits, trust_env=False) as client:
            server = Server(f"http://127.0.0.1:{port}", proc.pid, client)
            await _wait_ready(server, proc)
            yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _wait_ready(server: Server, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60  # imports alone take seconds on a busy machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited with {proc.returncode} before it answered")
        try:
            if (await server.client.get(f"{server.base}/healthz")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    raise BenchError("the server did not answer /healthz within 60 s")


async def _until_running(server: Server, sandbox_id: str, user: str) -> dict[str, Any]:
    """Poll the status every 10 ms until the preview runs; its status."""
    url, headers = f"{server.base}{API}/{sandbox_id}", {"X-User-Id": user}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status: dict[str, Any] = _ok(await server.client.get(url, headers=headers), "status").json()
        if status["status"] == "running":
            return status
        if status["status"] in ("error", "stopped"):
            raise BenchError(f"preview {sandbox_id} failed: {status.get('error')}")
        await asyncio.sleep(0.01)
    raise BenchError(f"preview {sandbox_id} did not start within 120 s")


async def _create(server: Server, body: dict[str, Any], user: str) -> str:
    res = await server.client.post(f"{server.base}{API}", json=body, headers={"X-User-Id": user})
    return str(_ok(res, "create").json()["sandboxId"])


async def _stop(server: Server, sandbox_id: str, user: str) -> None:
    res = await server.client.post(
        f"{server.base}{API}/stop", json={"sandboxId": sandbox_id}, headers={"X-User-Id": user}
    )
    _ok(res, "stop")


async def _time_to_preview(server: Server, body: dict[str, Any], user: str) -> float:
    """Seconds from POST to the first 200 of the page through the preview proxy."""
    started = time.perf_counter()
    sandbox_id = await _create(server, body, user)
    status = await _until_running(server, sandbox_id, user)
    host = httpx.URL(status["previewUrl"]).host
    page = await server.client.get(
        f"{server.base}/",
        headers={
            "Host": f"{host}:{httpx.URL(server.base).port}",
            "x-daytona-preview-token": status["previewToken"],
        },
    )
    if page.status_code != 200:
        raise BenchError(f"preview {sandbox_id} answered {page.status_code}, not 200")
    elapsed = time.perf_counter() - started
    await _stop(server, sandbox_id, user)
    return elapsed


async def preview_rows(server: Server, runs: int) -> list[Row]:
    rows = []
    for label, body in PREVIEWS:
        times = [
            await _time_to_preview(server, {**body, "projectId": f"b{i}"}, f"u{i}")
            for i in range(runs)
        ]
        median, p95 = statistics.median(times) * 1000, _pct(times, 0.95) * 1000
        rows.append(
            [f"time to first 200: {label}", f"{median:.0f} ms", f"p95 {p95:.0f} ms", f"{runs} runs"]
        )
    return rows


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


def _wrk(base: str, kind: str, watched: list[tuple[str, str]], conns: int) -> str:
    """Throughput with wrk (a C load generator: the client does not compete for the GIL)."""
    pairs = ",".join(f'{{"{user}","{sid}","{kind}"}}' for user, sid in watched)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % pairs)
    try:
        argv = ["wrk", "-t2", f"-c{conns}", f"-d{WRK_SECONDS}s", "--latency", "-s", f.name, base]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def _wrk_row(label: str, out: str, conns: int) -> Row:
    lines = out.splitlines()
    rate = next(line.split()[1] for line in lines if line.startswith("Requests/sec"))
    lat = {
        line.split()[0]: line.split()[1]
        for line in lines
        if line.strip().startswith(("50%", "99%"))
    }
    errors = [line.strip() for line in lines if "Non-2xx" in line or "errors" in line]
    detail = f"p50 {lat.get('50%')}, p99 {lat.get('99%')}" + (f"; {errors}" if errors else "")
    return [
        f"{label} throughput (wrk)",
        f"{float(rate):.0f} req/s",
        detail,
        f"{WRK_SECONDS}s, {conns} conns",
    ]


Request = Callable[[int], Awaitable[httpx.Response]]


async def _load(make: Request, total: int, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    queue = list(range(total))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            t = time.perf_counter()
            _ok(await make(i), "load request")
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started), latencies


def _requests(server: Server, watched: list[tuple[str, str]]) -> dict[str, Request]:
    """One request maker per measured route, spread over the watched previews."""
    client, base = server.client, server.base

    async def heartbeat(i: int) -> httpx.Response:
        user, sid = watched[i % len(watched)]
        body = {"sandboxId": sid, "visible": True}
        return await client.post(f"{base}{API}/heartbeat", json=body, headers={"X-User-Id": user})

    async def status(i: int) -> httpx.Response:
        user, sid = watched[i % len(watched)]
        return await client.get(f"{base}{API}/status?sandboxId={sid}", headers={"X-User-Id": user})

    async def health(i: int) -> httpx.Response:
        return await client.get(f"{base}/healthz")

    return {"healthz (baseline)": health, "heartbeat": heartbeat, "status": status}


async def throughput_rows(
    server: Server, watched: list[tuple[str, str]], requests: int, concurrency: int
) -> list[Row]:
    rows = []
    if shutil.which("wrk"):
        for label, kind in (
            ("healthz (baseline)", "healthz"),
            ("heartbeat", "heartbeat"),
            ("status", "status"),
        ):
            out = await asyncio.to_thread(_wrk, server.base, kind, watched, concurrency)
            rows.append(_wrk_row(label, out, concurrency))
    for label, make in _requests(server, watched).items():
        rate, lat = await _load(make, requests, concurrency)
        p50, p99 = _pct(lat, 0.5) * 1000, _pct(lat, 0.99) * 1000
        rows.append(
            [
                f"{label} throughput",
                f"{rate:.0f} req/s",
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms",
                f"{requests} req, {concurrency} conc.",
            ]
        )
    return rows


async def run(runs: int, requests: int, concurrency: int, env: dict[str, str]) -> list[Row]:
    async with served(env, concurrency) as server:
        rss_idle = _rss_mb(server.pid)
        rows = await preview_rows(server, runs)
        body = {"projectId": "hb", "files": [{"path": "index.html", "content": "x"}]}
        watched = [(f"hb{i}", await _create(server, body, f"hb{i}")) for i in range(concurrency)]
        for user, sid in watched:
            await _until_running(server, sid, user)
        rows += await throughput_rows(server, watched, requests, concurrency)
        rss_after = _rss_mb(server.pid)
        rows.append(
            [
                "server RSS idle → after load",
                f"{rss_idle:.0f} MB",
                f"{rss_after:.0f} MB",
                f"{len(watched)} previews running",
            ]
        )
        for user, sid in watched:
            await _stop(server, sid, user)
    return rows


async def network_rows(runs: int, env: dict[str, str]) -> list[Row]:
    """Time to a static preview with each sandbox in a network of its own (bubblewrap + pasta)
    and with the host's network, two servers side by side, runs interleaved (the machine's load
    moves both alike)."""
    modes = ("isolated", "host")
    async with (
        served({**env, "LOCAL_SANDBOX_NETWORK": "isolated"}, 4) as isolated,
        served({**env, "LOCAL_SANDBOX_NETWORK": "host"}, 4) as host,
    ):
        servers = {"isolated": isolated, "host": host}
        for mode, server in servers.items():
            ready = _ok(await server.client.get(f"{server.base}/readyz"), "readyz").json()
            if ready["sandboxIsolation"]["network"] != (mode == "isolated"):
                raise BenchError(f"{mode}: /readyz says {ready['sandboxIsolation']}")
        rows = []
        for label, body in (PREVIEWS[0], PREVIEWS[2]):
            times: dict[str, list[float]] = {mode: [] for mode in modes}
            for i in range(runs):
                for mode in modes if i % 2 == 0 else reversed(modes):
                    elapsed = await _time_to_preview(
                        servers[mode], {**body, "projectId": f"n{i}"}, f"n{i}"
                    )
                    times[mode].append(elapsed)
            medians = {mode: statistics.median(times[mode]) * 1000 for mode in modes}
            for mode in modes:
                rows.append(
                    [
                        f"time to first 200: {label}, {mode} network",
                        f"{medians[mode]:.0f} ms",
                        f"p95 {_pct(times[mode], 0.95) * 1000:.0f} ms",
                        f"{runs} runs",
                    ]
                )
            ratio = medians["isolated"] / medians["host"]
            rows.append([f"isolated / host: {label}", f"{ratio:.2f}", "medians", f"{runs} runs"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="Previews timed per source kind.")
    parser.add_argument("--requests", type=int, default=2000, help="Requests per measurement.")
    parser.add_argument("--concurrency", type=int, default=16, help="Concurrent clients/previews.")
    parser.add_argument(
        "--backend",
        choices=["embedded", "pg"],
        default="embedded",
        help="embedded (SQLite + in-process store) or pg (Postgres + Redis)",
    )
    parser.add_argument(
        "--network",
        action="store_true",
        help="Only compare time to a static preview: sandboxes in a network of their own "
        "(LOCAL_SANDBOX_NETWORK=isolated) against the host's network.",
    )
    args = parser.parse_args(argv)
    env: dict[str, str] = {}
    if args.backend == "pg":
        env = {
            "DATABASE_URL": os.environ.get(
                "BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
            ),
            "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        }
    if args.network:
        rows = asyncio.run(network_rows(args.runs, env))
    else:
        rows = asyncio.run(run(args.runs, args.requests, args.concurrency, env))
    print(f"backend: {args.backend} (1 uvicorn worker, {os.cpu_count()} cores)")
    print("| what | result | detail | sample |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
