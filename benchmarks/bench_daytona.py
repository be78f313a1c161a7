"""Through the Daytona emulator (`tests/support/daytona`, the real `daytona` SDK on the wire)
with 20 ms added to every call: time to preview, the provider calls one static create makes (by
route), and the calls heartbeats and status reads make (none)."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import API, REDIS_URL, Server, create, first_200, ok, served, stop, until_running

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the emulator lives in tests/

CALL_SECONDS = 0.02


async def _beats_and_status(server: Server, sandbox_id: str, user: str, n: int) -> None:
    headers = {"X-User-Id": user}
    for _ in range(n):
        body = {"sandboxId": sandbox_id, "visible": True}
        url = f"{server.base}{API}/heartbeat"
        ok(await server.client.post(url, json=body, headers=headers), "heartbeat")
        url = f"{server.base}{API}/status?sandboxId={sandbox_id}"
        ok(await server.client.get(url, headers=headers), "status")


async def measure(database_url: str, runs: int, body: dict[str, Any]) -> dict[str, Any]:
    from tests.support.daytona import DaytonaEmulator

    emulator = DaytonaEmulator().start()
    emulator.set_latency(CALL_SECONDS)
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": REDIS_URL,
        "DAYTONA_API_KEY": emulator.api_key,
        "DAYTONA_API_URL": emulator.api_url,
        "DAYTONA_TARGET": emulator.target,
        "REAPER_ENABLED": "false",
    }
    times: list[float] = []
    per_create: list[dict[str, int]] = []
    hot_calls = 0
    try:
        async with served(env) as server:
            for i in range(runs):
                user = f"dt{i}"
                emulator.reset_calls()
                started = time.perf_counter()
                sandbox_id = await create(server, {"projectId": "site", **body}, user)
                await first_200(server, await until_running(server, sandbox_id, user))
                times.append(time.perf_counter() - started)
                per_create.append(emulator.counts(api_only=True))
                emulator.reset_calls()
                await _beats_and_status(server, sandbox_id, user, 10)
                hot_calls += sum(emulator.counts(api_only=True).values())
                await stop(server, sandbox_id, user)
    finally:
        emulator.stop()
    calls = per_create[len(per_create) // 2]
    return {
        "median_ms": statistics.median(times) * 1000,
        "calls": calls,
        "total": sum(calls.values()),
        "hot_calls": hot_calls,
        "hot_requests": 20 * runs,
    }
