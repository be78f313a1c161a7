"""The reaper at scale, in process against real Postgres and Redis: 10,000 idle sandboxes reaped
beside 100,000 watched ones (a provider whose delete takes 20 ms, as an emulated Daytona call),
then one pass over the 100,000 with none due — its time and the plans of its queries."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from harness import PG_URL, REDIS_URL, drop_keys
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import create_async_engine

from midori_preview.bootstrap import build_provider, build_services
from midori_preview.clock import SystemClock
from midori_preview.logging import configure_logging
from midori_preview.providers.base import ProviderSandbox
from midori_preview.settings import Settings

DELETE_SECONDS = 0.02


class SlowDeletes:
    """The local provider (no idle clock of its own), but every delete is a 20 ms call to a
    provider that has nothing to delete — as an emulated Daytona would take."""

    name = "local"

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.in_flight = self.most_in_flight = self.deleted = 0

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def attach(self, provider_id: str, sandbox_id: str) -> ProviderSandbox:
        return ProviderSandbox("local", provider_id, sandbox_id, "/")

    async def delete(self, sandbox: ProviderSandbox) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(DELETE_SECONDS)
        finally:
            self.in_flight -= 1
        self.deleted += 1


@asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    """A database of its own for this run, dropped afterwards."""
    name = f"mp_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


SEED = """
INSERT INTO sandboxes (id, user_id, project_id, kind, provider, provider_id, source_kind,
  source_digest, status, port, commands_run, visible, active, created_at, updated_at, ready_at,
  last_heartbeat_at, charged_until, expires_at)
SELECT :tag || g, :tag || 'u' || g, 'p', 'user', 'local', :tag || g, 'files', 'd', 'running',
  3000, 0, true, true, now() - interval '1 hour', now(), now() - interval '1 hour',
  now() - make_interval(secs => :age), now() - make_interval(secs => :age),
  now() + interval '1 hour'
FROM generate_series(1, :n) g
"""


async def seed(url: str, *, watched: int, idle: int) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text(SEED), {"tag": "w", "n": watched, "age": 10})
        await conn.execute(text(SEED), {"tag": "i", "n": idle, "age": 3600})
        await conn.execute(text("ANALYZE sandboxes"))
    await engine.dispose()


async def measure(watched: int, idle: int, tmp: Path) -> dict[str, Any]:
    async with scratch_database() as url:
        settings = Settings(
            database_url=url, redis_url=REDIS_URL, data_dir=tmp / "data", reaper_enabled=False,
            preview_deployment=f"bench{secrets.token_hex(3)}", log_level="WARNING",
            _env_file=None,
        )  # type: ignore[call-arg]  # fmt: skip
        configure_logging("WARNING")  # as the served app does: no line per reaped sandbox
        provider = SlowDeletes(build_provider(settings, SystemClock()))
        services = await build_services(settings, clock=SystemClock(), provider=provider)
        try:
            await seed(url, watched=watched, idle=idle)
            reaper = services.reaper
            started = time.perf_counter()
            counts = await reaper.run_pass()
            reap_s = time.perf_counter() - started
            if counts.get("idle", 0) != idle:
                raise RuntimeError(f"reaped {counts.get('idle', 0)} of {idle} idle sandboxes")
            quiet = []
            for _ in range(5):
                started = time.perf_counter()
                again = await reaper.run_pass()
                quiet.append(time.perf_counter() - started)
            plans = await _plans(services)
            return {
                "reap_s": reap_s,
                "most_in_flight": provider.most_in_flight,
                "quiet_ms": sorted(quiet)[len(quiet) // 2] * 1000,
                "quiet_due": sum(again.get(k, 0) for k in ("idle", "expired", "leaseLost")),
                "plans": plans,
            }
        finally:
            await services.aclose()
            await drop_keys(settings.preview_deployment)


async def _plans(services: Any) -> list[str]:
    """The plan of every SELECT a quiet pass runs on `sandboxes`: the index each one uses."""
    engine = services.engine
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM sandboxes" in statement:
            seen.append((statement, params))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        await services.reaper.run_pass()
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    found = []
    async with engine.connect() as conn:
        for statement, params in seen:
            rows = await conn.exec_driver_sql("EXPLAIN " + statement, params)
            plan = " ".join(str(r[0]) for r in rows)
            scans = [
                w for w in ("Seq Scan", "Index Scan", "Index Only Scan", "Bitmap") if w in plan
            ]
            index = [part.split()[0] for part in plan.split(" using ")[1:]]
            found.append(f"{'/'.join(scans)} {','.join(sorted(set(index)))}")
    return found


def main(argv: list[str] | None = None) -> None:
    """Only this section: `python benchmarks/reaper_scale.py --idle 10000`."""
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watched", type=int, default=100_000)
    parser.add_argument("--idle", type=int, default=10_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="midori-bench-reaper-") as tmp:
        r = asyncio.run(measure(args.watched, args.idle, Path(tmp)))
    r["load1"] = os.getloadavg()[0]
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
