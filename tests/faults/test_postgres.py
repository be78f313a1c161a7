"""Postgres faults under traffic, on a real Postgres: connections terminated by the server
(`pg_terminate_backend`) answer no 500 — a dropped pooled connection is replaced at checkout, one
dropped mid-query answers 503 `database_unavailable` — and the service recovers without a
restart; Postgres stopped for a while answers 503 while down and loses nothing.

Scale: MP_FAULT_ROUNDS (terminations, default 4) and MP_FAULT_DOWN_SECONDS (outage, default 3;
docs/RELIABILITY.md runs 10)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from midori_preview.db.engine import upgrade_head
from tests.conftest import PG_ADMIN, REDIS_URL, Backend, Running, make_settings, running_app
from tests.conftest import user_headers as as_user
from tests.quota.helpers import create, create_running, heartbeat, ledger_total, status
from tests.support import postgres
from tests.support.clock import ManualClock
from tests.support.waiting import builds_settle, eventually

ROUNDS = int(os.environ.get("MP_FAULT_ROUNDS", "4"))
DOWN_SECONDS = float(os.environ.get("MP_FAULT_DOWN_SECONDS", "3"))
OK = {200, 202, 409, 410, 429, 503}  # 409/410/429: the churn loop hit its limits; 503: fault


def terminate_backends(database: str) -> int:
    """Kill every server process connected to `database` (what a failover or an admin does)."""
    out = subprocess.run(
        ["psql", PG_ADMIN, "-qtA", "-c",
         "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "  # noqa: S608
         f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout.strip() or 0)


class Traffic:
    """Loops of status, heartbeat, usage and admin reads, and create/stop by another user, each
    recording the status codes it got (an exception out of the app is recorded too)."""

    def __init__(self, running: Running, sandbox_id: str) -> None:
        self.running = running
        self.sandbox_id = sandbox_id
        self.codes: Counter[int | str] = Counter()
        self.stopping = asyncio.Event()

    @property
    def done(self) -> int:
        return sum(self.codes.values())

    async def _loop(self, request: Any) -> None:
        while not self.stopping.is_set():
            try:
                res = await request()
                self.codes[res.status_code] += 1
                if res.status_code == 500:
                    self.codes[f"500 {res.text[:200]}"] += 1
            except Exception as exc:  # a crash the app did not answer: the worst outcome
                self.codes[f"raised {type(exc).__name__}: {exc}"[:200]] += 1
            await asyncio.sleep(0)

    async def _create_stop(self) -> None:
        c = self.running.client
        while not self.stopping.is_set():
            try:
                res = await create(self.running, "churn", user="carol", content=f"{self.done}")
                self.codes[res.status_code] += 1
                ids = (
                    [res.json()["sandboxId"]]
                    if res.status_code == 202
                    else res.json()["error"].get("activeSandboxIds", [])
                )
                for sandbox_id in ids:
                    r = await c.post(
                        "/api/preview/daytona/stop",
                        json={"sandboxId": sandbox_id},
                        headers=as_user("carol"),
                    )
                    self.codes[r.status_code] += 1
            except Exception as exc:
                self.codes[f"raised {type(exc).__name__}: {exc}"[:200]] += 1

    async def run(self) -> None:
        c, sid = self.running.client, self.sandbox_id
        admin = as_user("root", admin=True)
        await asyncio.gather(
            self._loop(lambda: c.get(f"/api/preview/daytona/status?sandboxId={sid}",
                                     headers=as_user("alice"))),
            self._loop(lambda: heartbeat(self.running, sid)),
            self._loop(lambda: c.get("/api/preview/usage", headers=as_user("alice"))),
            self._loop(lambda: c.get("/api/preview/admin/sandboxes", headers=admin)),
            self._create_stop(),
        )  # fmt: skip


async def test_terminated_connections_never_answer_500(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    assert pg_backend.database_url is not None
    database = pg_backend.database_url.rsplit("/", 1)[1]
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as running:
        sandbox_id = await create_running(running)
        # Idle pool, every connection killed: the very next request is answered (was a 500).
        assert terminate_backends(database) >= 1
        assert (await status(running, sandbox_id))["status"] == "running"

        traffic = Traffic(running, sandbox_id)
        task = asyncio.create_task(traffic.run())
        killed = 0
        try:
            for _ in range(ROUNDS):
                mark = traffic.done
                await eventually(lambda m=mark: traffic.done >= m + 30, within=60,
                                 what="traffic flowing between terminations")  # fmt: skip
                killed += terminate_backends(database)
            mark = traffic.done
            await eventually(lambda: traffic.done >= mark + 30, within=60, what="traffic after")
        finally:
            traffic.stopping.set()
            await task
        unexpected = {k: n for k, n in traffic.codes.items() if k not in OK}
        assert unexpected == {}, traffic.codes
        assert killed >= ROUNDS
        print(f"\nterminations={killed} requests={traffic.done} codes={dict(traffic.codes)}")

        # Fully recovered, no restart: every kind of request answers again, nothing leaked.
        assert (await status(running, sandbox_id))["status"] == "running"
        assert (await heartbeat(running, sandbox_id)).status_code == 200
        await builds_settle(running.service)
        # A stop cut short by a killed connection stays `stopping` (its slot held) until the
        # reaper retries it: what a replica's scheduler does every REAPER_INTERVAL_SECONDS.
        clock.advance(120)
        await running.services.reaper.run_pass()
        await running.services.reaper.sync()
        live = await running.services.db.sandboxes.live_for_user("carol")
        holders = await running.services.quota.slot_holders("carol")
        assert len(live) <= 1
        assert set(holders) <= {r.id for r in live}, (holders, live)  # no slot leaked


@pytest.mark.skipif(postgres.available() is not None, reason=str(postgres.available()))
async def test_postgres_down_answers_503_and_loses_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    pg = postgres.PrivatePostgres()
    await pg.init()
    try:
        await asyncio.to_thread(upgrade_head, pg.url)
        settings = make_settings(tmp_path, Backend("pg", pg.url, REDIS_URL))
        async with running_app(settings, clock=clock) as running:
            sandbox_id = await create_running(running)
            clock.advance(60)
            assert (await heartbeat(running, sandbox_id)).status_code == 200
            charged = await ledger_total(running)
            assert charged == 60

            await pg.stop()
            clock.advance(20)  # watched through the outage: these seconds are owed too
            codes: Counter[tuple[str, Any]] = Counter()
            loop = asyncio.get_running_loop()
            until = loop.time() + DOWN_SECONDS
            c = running.client
            while loop.time() < until:  # the outage lasts this long, requests all along
                for name, res in (
                    ("status", await c.get(f"/api/preview/daytona/status?sandboxId={sandbox_id}",
                                           headers=as_user("alice"))),
                    ("heartbeat", await heartbeat(running, sandbox_id)),
                    ("create", await create(running, "other", user="dave")),
                    ("usage", await c.get("/api/preview/usage", headers=as_user("alice"))),
                ):  # fmt: skip
                    code = res.json()["error"]["code"] if res.status_code >= 400 else ""
                    codes[(name, f"{res.status_code} {code}".strip())] += 1
                assert (await c.get("/healthz")).status_code == 200
                assert (await c.get("/readyz")).status_code == 503
                await asyncio.sleep(0.05)  # pacing of the traffic, not a wait for a condition
            # Heartbeats are one Redis script (written behind to the ledger) and the usage answer
            # comes from Redis' mirror: both 200; everything that needs the database says so.
            allowed = {("usage", "200"), ("heartbeat", "200"), *((n, "503 database_unavailable")
                       for n in ("status", "create", "usage"))}  # fmt: skip
            assert set(codes) <= allowed, codes
            assert codes[("heartbeat", "200")] > 0
            assert codes[("status", "503 database_unavailable")] > 0
            print(f"\noutage {DOWN_SECONDS:g} s: {dict(codes)}")

            await pg.start()

            async def answers() -> bool:
                res = await c.get(
                    f"/api/preview/daytona/status?sandboxId={sandbox_id}", headers=as_user("alice")
                )
                return res.status_code == 200

            await eventually(answers, within=30, what="status answers after the outage")
            assert (await status(running, sandbox_id))["status"] == "running"
            clock.advance(30)
            assert (await heartbeat(running, sandbox_id)).status_code == 200
            # Nothing lost, nothing charged twice: the outage's 20 s (queued in Redis while
            # Postgres was down) and the 30 s after it, each once.
            assert await ledger_total(running) == charged + 20 + 30
            assert (await c.get("/readyz")).status_code == 200
            assert await running.services.db.sandboxes.live_for_user("dave") == []
            assert await running.services.quota.slot_holders("dave") == []
    finally:
        await pg.destroy()


def test_a_server_refusing_connections_is_unavailable_not_a_crash() -> None:
    """ "too many clients" (SQLSTATE 53300), "shutting down" (57P01): 503; a constraint
    violation stays a bug (500)."""
    import asyncpg
    import asyncpg.exceptions as pg
    import sqlalchemy.exc as sa
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

    from midori_preview.db.errors import unavailable

    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)

    def wrapped(cause: Exception) -> sa.DBAPIError:
        try:
            try:
                raise cause
            except Exception as exc:
                raise dbapi.Error(str(cause)) from exc
        except Exception as outer:
            return sa.DBAPIError.instance("SELECT 1", {}, outer, dbapi.Error)

    assert unavailable(wrapped(pg.TooManyConnectionsError("too many clients")))
    assert unavailable(wrapped(pg.AdminShutdownError("terminating connection")))
    assert not unavailable(wrapped(pg.UniqueViolationError("duplicate key")))
