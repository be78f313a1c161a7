"""Provider sync: sandboxes with our labels that the database does not know (past a grace period)
are deleted as orphans; rows whose provider sandbox vanished are closed as `lost` and their slots
freed; Redis slots and usage mirrors are rebuilt from Postgres — after a FLUSHALL too, with nobody
over the cap afterwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from midori_preview.providers.base import ProviderSandbox, SandboxSpec
from midori_preview.settings import Settings
from tests.conftest import Backend, Running, make_settings, running_app
from tests.quota.helpers import (
    PrivateRedis,
    captured_logs,
    create,
    create_running,
    events,
    heartbeat,
    ledger_total,
    mirror,
    status,
    stop,
)
from tests.support.clock import ManualClock

DAY = "2026-01-01"


def labels(settings: Settings, sandbox_id: str, *, deployment: str | None = None) -> dict[str, str]:
    return {
        "midori-preview": "1",
        "midori-preview/deployment": deployment or settings.preview_deployment,
        "midori-preview/sandbox-id": sandbox_id,
        "midori-preview/user-id": "mallory",
        "midori-preview/project-id": "site",
    }


async def listed(app: Running) -> set[str]:
    found = await app.services.provider.list_sandboxes({"midori-preview": "1"})
    return {i.provider_id for i in found}


async def test_an_orphan_sandbox_is_deleted_once_past_the_grace_period(
    tmp_path: Path, pg_backend: Backend
) -> None:
    clock = ManualClock()
    settings = make_settings(tmp_path, pg_backend, log_level="INFO", orphan_grace_seconds=600)
    async with running_app(settings, clock=clock) as app:
        provider = app.services.provider
        known = await create_running(app, "site")
        finished = await create_running(app, "old", user="bob")
        await stop(app, finished, user="bob")
        # The local provider stamps its sandboxes with real time: service time catches up first.
        clock.set(datetime.now(UTC))
        # A crash between provider create and the row insert; a sandbox whose delete was lost
        # after its row was stopped; and one of another deployment sharing the provider account.
        for spec in (
            SandboxSpec("orphan0000000000", "mallory", "site", labels=labels(settings, "orphan0")),
            SandboxSpec(finished + "x", "bob", "old", labels=labels(settings, finished)),
            SandboxSpec(
                "foreign000000000",
                "mallory",
                "site",
                labels=labels(settings, "foreign", deployment="someone-else"),
            ),
        ):
            await provider.create(spec, timeout=30)

        assert (await app.services.reaper.sync()).get("orphans", 0) == 0  # too young
        clock.advance(599)
        assert (await app.services.reaper.sync()).get("orphans", 0) == 0
        clock.advance(60)  # well past the grace period
        with captured_logs() as logs:
            counts = await app.services.reaper.sync()
        assert counts["orphans"] == 2
        assert await listed(app) == {known, "foreign000000000"}
        assert {e["provider_id"] for e in events(logs, "cleanup.orphan")} == {
            "orphan0000000000",
            finished + "x",
        }
        assert {e["provider_id"] for e in events(logs, "sandbox.deleted")} == {
            "orphan0000000000",
            finished + "x",
        }
        assert (await status(app, known))["status"] == "running"
        await provider.delete(ProviderSandbox("local", "foreign000000000", "foreign", ""))


async def test_a_vanished_provider_sandbox_closes_its_row_as_lost_and_frees_the_slot(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, backend, log_level="INFO")
    async with running_app(settings, clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        await heartbeat(app, sandbox_id)
        # Deleted behind the service's back (provider-side auto-stop, an operator, a host crash).
        await app.services.provider.delete(ProviderSandbox("local", sandbox_id, sandbox_id, ""))
        assert (await create(app, "other")).status_code == 409

        with captured_logs() as logs:
            counts = await app.services.reaper.sync()
        assert counts["lost"] == 1
        lost = await status(app, sandbox_id)
        assert (lost["status"], lost["reason"]) == ("stopped", "lost")
        assert events(logs, "cleanup.lost", sandbox_id=sandbox_id)
        assert await app.services.quota.slot_holders("alice") == []
        assert (await heartbeat(app, sandbox_id)).json()["error"]["reason"] == "lost"
        assert await ledger_total(app) == 120

        res = await create(app, "other")
        assert res.status_code == 202, res.text
        await app.wait_until(res.json()["sandboxId"], "running")
        assert (await app.services.reaper.sync()).get("lost", 0) == 0


@asynccontextmanager
async def flushable_app(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> AsyncIterator[Running]:
    """An app whose Redis this test may FLUSHALL: a private redis-server (pg) or the in-process
    store (embedded) — never the Redis that other tests share."""
    if backend.name == "embedded":
        async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
            yield app
        return
    redis = PrivateRedis(tmp_path / "redis")
    await redis.start()
    try:
        settings = make_settings(tmp_path, backend, redis_url=redis.url)
        async with running_app(settings, clock=clock) as app:
            yield app
    finally:
        await redis.kill()


async def test_a_redis_flush_mid_run_is_repaired_by_sync_with_nobody_over_the_cap(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with flushable_app(tmp_path, backend, clock) as app:
        quota = app.services.quota
        alice = await create_running(app, "site")
        bob = await create_running(app, "site", user="bob")
        clock.advance(120)
        await heartbeat(app, alice)
        clock.advance(30)
        await heartbeat(app, bob, user="bob")
        ghost = await quota.acquire_slot("carol", "ghost", limit=1, lease_seconds=600)
        assert ghost.granted  # a slot whose sandbox Postgres never recorded

        # Written behind by the scheduler's flush before Redis lost everything (links queued in
        # Redis when it is flushed are lost: charged less, never twice).
        await app.service.flush_heartbeats()
        await app.services.redis.flushall()
        assert await quota.slot_holders("alice") == []
        assert await mirror(app, "alice", DAY) is None
        await quota.acquire_slot("carol", "ghost", limit=1, lease_seconds=600)

        counts = await app.services.reaper.sync()
        assert counts["usageMirrors"] == 2
        assert await quota.slot_holders("alice") == [alice]
        assert await quota.slot_holders("bob") == [bob]
        assert await quota.slot_holders("carol") == []
        assert await mirror(app, "alice", DAY) == 120 == await ledger_total(app, "alice")
        assert await mirror(app, "bob", DAY) == 150 == await ledger_total(app, "bob")

        refused = await create(app, "other")
        assert refused.status_code == 409
        assert refused.json()["error"]["activeSandboxIds"] == [alice]
        assert (await create(app, "other", user="bob")).status_code == 409

        clock.advance(120)
        assert (await heartbeat(app, alice)).json()["usage"]["usedSecondsToday"] == 270
        assert await mirror(app, "alice", DAY) == 270 == await ledger_total(app, "alice")


async def test_the_scheduled_tick_syncs_when_a_sync_is_due(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, reaper_sync_interval_seconds=300)
    async with running_app(settings, clock=clock) as app:
        reaper = app.services.reaper
        sandbox_id = await create_running(app, "site")
        await app.services.provider.delete(ProviderSandbox("local", sandbox_id, sandbox_id, ""))

        first = await reaper.tick()
        assert first is not None
        assert first["sync"]["lost"] == 1
        clock.advance(299)
        assert "sync" not in (await reaper.tick() or {})
        clock.advance(1)
        assert "sync" in (await reaper.tick() or {})
        state = await reaper.last_run()
        assert state["lastSyncAt"] == clock.now().isoformat()


async def test_a_rebuild_landing_between_a_creates_slot_and_its_row_keeps_that_slot(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """Another replica's sync runs while a create holds its new slot but has not yet written the
    row: the rebuild must not free that slot (else a second create would get one too)."""
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        repo = app.services.db.sandboxes
        insert = repo.insert
        rebuilds: list[asyncio.Task[dict[str, int]]] = []

        async def insert_after_a_rebuild(*args: Any, **kwargs: Any) -> Any:
            task = asyncio.create_task(app.services.reaper.rebuild_redis())
            rebuilds.append(task)
            with contextlib.suppress(TimeoutError):  # it may wait for this create to finish
                await asyncio.wait_for(asyncio.shield(task), 0.3)
            return await insert(*args, **kwargs)

        repo.insert = insert_after_a_rebuild
        res = await create(app, "site")
        repo.insert = insert
        assert res.status_code == 202, res.text
        await rebuilds[0]

        sandbox_id = res.json()["sandboxId"]
        assert await app.services.quota.slot_holders("alice") == [sandbox_id]
        assert (await create(app, "other")).status_code == 409
        await app.service.wait_idle()


async def test_a_rebuild_racing_a_charge_leaves_the_mirror_equal_to_the_ledger(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """A heartbeat charges between the rebuild's ledger read and its mirror write: the mirror
    must not fall behind the ledger (it decides how much of the cap is left)."""
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        await heartbeat(app, sandbox_id)
        usage = app.services.db.usage
        read = usage.by_user_for_day

        async def read_then_a_heartbeat_lands(day: str) -> dict[str, int]:
            totals = await read(day)
            clock.advance(120)
            assert (await heartbeat(app, sandbox_id)).status_code == 200
            return dict(totals)

        usage.by_user_for_day = read_then_a_heartbeat_lands
        await app.services.reaper.rebuild_redis()
        usage.by_user_for_day = read
        assert await ledger_total(app) == 240
        assert await mirror(app, "alice", DAY) == 240


async def test_a_create_between_a_flush_and_the_next_sync_is_held_to_the_limit(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with flushable_app(tmp_path, pg_backend, clock) as app:
        await create_running(app, "site")
        await app.services.redis.flushall()
        res = await create(app, "other")
        await app.service.wait_idle()
        assert res.status_code == 409
