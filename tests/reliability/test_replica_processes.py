"""The create storm across real replicas: separate uvicorn processes (`midori-preview serve`)
sharing one Postgres, one Redis and one Daytona (the project's emulator, as replicas in
production share the real one). Users fire concurrent creates at every replica with a limit of
2 live previews each: sampled all along (rows in Postgres, slots in Redis), no user ever has
more than 2; every create is answered 202 or 409 (never 5xx), the 202s are exactly the rows;
after every preview is stopped no slot is left in Redis and no sandbox at the provider.

Scale: MP_PROC_STORM_USERS (default 4; full 50), MP_PROC_STORM_CREATES (default 4; full 10),
MP_PROC_STORM_REPLICAS (default 3)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from midori_preview.db.engine import make_engine
from midori_preview.kv import make_redis
from midori_preview.previews.states import LIVE
from midori_preview.quota.service import QuotaService
from tests.conftest import REDIS_URL
from tests.support.daytona import DaytonaEmulator
from tests.support.servers import free_port
from tests.support.waiting import eventually

USERS = int(os.environ.get("MP_PROC_STORM_USERS", "4"))
CREATES = int(os.environ.get("MP_PROC_STORM_CREATES", "4"))
REPLICAS = int(os.environ.get("MP_PROC_STORM_REPLICAS", "3"))
LIMIT = 2
API = "/api/preview/daytona"


@contextmanager
def replica_processes(env: dict[str, str], tmp_path: Path, n: int) -> Iterator[list[str]]:
    """`n` service processes, each on its own port and data directory: their base URLs."""
    procs: list[subprocess.Popen[bytes]] = []
    bases: list[str] = []
    try:
        for i in range(n):
            port = free_port()
            log = (tmp_path / f"replica{i}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "midori_preview.cli", "serve"],
                    env={
                        **os.environ,
                        **env,
                        "PORT": str(port),
                        "DATA_DIR": str(tmp_path / f"replica{i}"),
                    },
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            bases.append(f"http://127.0.0.1:{port}")
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def emulator() -> AsyncIterator[DaytonaEmulator]:
    running = DaytonaEmulator().start()
    try:
        yield running
    finally:
        running.stop()


async def test_never_more_than_the_limit_live_across_replica_processes(
    tmp_path: Path, pg_url: str
) -> None:
    deployment = f"t{secrets.token_hex(4)}"
    async with emulator() as daytona:
        env = {
            "DATABASE_URL": pg_url, "REDIS_URL": REDIS_URL, "PREVIEW_DEPLOYMENT": deployment,
            "DAYTONA_API_KEY": daytona.api_key, "DAYTONA_API_URL": daytona.api_url,
            "DAYTONA_TARGET": daytona.target, "MAX_CONCURRENT_SANDBOXES_PER_USER": str(LIMIT),
            "CREATE_RATE_PER_MINUTE": "10000", "REAPER_ENABLED": "false",
            "DATABASE_POOL_SIZE": "4", "DATABASE_MAX_OVERFLOW": "4", "LOG_LEVEL": "WARNING",
        }  # fmt: skip
        with replica_processes(env, tmp_path, REPLICAS) as bases:
            async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
                await _all_ready(client, bases)
                await _storm(client, bases, pg_url, deployment, daytona)


async def _all_ready(client: httpx.AsyncClient, bases: list[str]) -> None:
    async def ready() -> bool:
        for base in bases:
            try:
                if (await client.get(f"{base}/healthz")).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    await eventually(ready, within=120, what="every replica answers", interval=0.1)


async def _storm(
    client: httpx.AsyncClient, bases: list[str], pg_url: str, deployment: str, daytona: Any
) -> None:
    users = [f"{deployment}u{i}" for i in range(USERS)]  # the suite's database is shared
    engine = make_engine(pg_url, pool_size=1, max_overflow=0)  # the sampler's own connection
    redis = make_redis(REDIS_URL)
    quota = QuotaService(redis, prefix=f"mp:{deployment}")
    live_sql = text(
        "SELECT user_id, count(*) FROM sandboxes"
        " WHERE status = ANY(:live) AND user_id = ANY(:users) GROUP BY 1"
    )
    most: Counter[str] = Counter()
    samples = 0
    storming = asyncio.Event()

    async def live_rows() -> dict[str, int]:
        async with engine.connect() as conn:
            rows = await conn.execute(live_sql, {"live": [str(s) for s in LIVE], "users": users})
            return {user: n for user, n in rows.all()}

    async def sample() -> None:
        nonlocal samples
        while not storming.is_set():
            live = await live_rows()
            for u in users:
                most[u] = max(most[u], live.get(u, 0), len(await quota.slot_holders(u)))
            samples += 1
            await asyncio.sleep(0.01)

    async def create(base: str, user: str, j: int) -> httpx.Response:
        body = {"projectId": f"p{j}", "files": [{"path": "index.html", "content": f"<p>{j}</p>"}]}
        return await client.post(f"{base}{API}", json=body, headers={"X-User-Id": user})

    try:
        sampler = asyncio.ensure_future(sample())
        answers = await asyncio.gather(*(
            create(bases[(i + j) % len(bases)], u, j)
            for i, u in enumerate(users) for j in range(CREATES)
        ))  # fmt: skip
        made = {r.json()["sandboxId"]: r for r in answers if r.status_code == 202}
        await eventually(
            lambda: _settled(client, bases[0], made), within=300, what="every build settles"
        )
        storming.set()
        await sampler
        codes = Counter(
            f"{r.status_code} {r.json()['error']['code']}" if r.status_code >= 400
            else r.status_code for r in answers
        )  # fmt: skip
        assert set(codes) <= {202, "409 concurrency_limit"}, codes
        assert max(most.values()) <= LIMIT, most
        assert samples > 0
        async with engine.connect() as conn:
            ours = text("SELECT id FROM sandboxes WHERE user_id = ANY(:users)")
            ids = (await conn.execute(ours, {"users": users})).scalars().all()
        assert set(ids) == set(made)  # a row for each 202, and no other
        per_user = Counter(r.request.headers["X-User-Id"] for r in made.values())
        assert all(n <= LIMIT for n in per_user.values()), per_user

        for sandbox_id, res in made.items():
            user = res.request.headers["X-User-Id"]
            stop = await client.post(
                f"{bases[-1]}{API}/stop", json={"sandboxId": sandbox_id},
                headers={"X-User-Id": user},
            )  # fmt: skip
            assert stop.status_code == 200, stop.text
        assert await live_rows() == {}
        for u in users:
            assert await quota.slot_holders(u) == [], u  # no slot leaked
        await eventually(lambda: daytona.sandboxes == {}, within=60, what="no sandbox left")
        most_live = max(most.values())
        print(
            f"\n{USERS} users x {CREATES} creates on {len(bases)} replica processes: "
            f"{dict(codes)}, most live at once {most_live}, {samples} samples"
        )
    finally:
        storming.set()
        keys = [k async for k in redis.scan_iter(match=f"mp:{deployment}:*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()
        await engine.dispose()


async def _settled(client: httpx.AsyncClient, base: str, made: dict[str, Any]) -> bool:
    for sandbox_id, res in made.items():
        user = res.request.headers["X-User-Id"]
        status = await client.get(f"{base}{API}/{sandbox_id}", headers={"X-User-Id": user})
        if status.json()["status"] not in ("running", "error", "stopped"):
            return False
    return True
