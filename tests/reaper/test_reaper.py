"""The reaper pass: idle (and the shorter allowance of a hidden tab), expired, builds whose owning
replica stopped renewing its lease, retention of stopped rows; two replicas' reapers running at
the same moment act once per sandbox. Time moves on the ManualClock; sandboxes are real."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from midori_preview.db.models import Sandbox
from midori_preview.previews.admission import new_sandbox_id
from midori_preview.providers.base import SandboxSpec
from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.previews.helpers import workspace_of
from tests.quota.helpers import (
    captured_logs,
    create,
    create_running,
    events,
    heartbeat,
    ledger_total,
    replicas,
    row,
    status,
    stop,
)
from tests.support.clock import ManualClock
from tests.support.waiting import eventually


async def provider_ids(app: Running) -> set[str]:
    listed = await app.services.provider.list_sandboxes(
        {"midori-preview": "1", "midori-preview/deployment": app.settings.preview_deployment}
    )
    return {i.provider_id for i in listed}


async def test_a_sandbox_nobody_watches_is_stopped_as_idle(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, backend, log_level="DEBUG")
    async with running_app(settings, clock=clock) as app:
        reaper = app.services.reaper
        sandbox_id = await create_running(app, "site")
        with captured_logs() as logs:
            clock.advance(120)
            assert (await heartbeat(app, sandbox_id)).status_code == 200
            clock.advance(299)
            assert (await reaper.run_pass()).get("idle", 0) == 0
            assert (await status(app, sandbox_id))["status"] == "running"

            clock.advance(1)  # 300 s since the last heartbeat
            counts = await reaper.run_pass()
        assert counts["idle"] == 1

        gone = await status(app, sandbox_id)
        assert (gone["status"], gone["reason"]) == ("stopped", "idle")
        assert sandbox_id not in await provider_ids(app)
        assert await app.services.quota.slot_holders("alice") == []
        assert await ledger_total(app) == 120  # not charged past the last heartbeat
        late = await heartbeat(app, sandbox_id)
        assert late.status_code == 410
        assert late.json()["error"]["reason"] == "idle"

        assert events(logs, "heartbeat", sandbox_id=sandbox_id)
        (idle,) = events(logs, "cleanup.idle")
        assert idle["sandbox_id"] == sandbox_id
        assert (idle["idle_seconds"], idle["visible"]) == (300, True)
        assert events(logs, "sandbox.deleted", sandbox_id=sandbox_id, reason="idle")
        passes = events(logs, "cleanup.pass")
        assert [p.get("idle", 0) for p in passes] == [0, 1]

        assert (await create(app, "other")).status_code == 202  # the slot is free again
        await app.service.wait_idle()


async def test_a_hidden_tab_gets_the_shorter_idle_timeout(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path,
        pg_backend,
        log_level="INFO",
        idle_timeout_seconds=300,
        hidden_idle_timeout_seconds=180,
    )
    async with running_app(settings, clock=clock) as app:
        shown = await create_running(app, "site", user="alice")
        hidden = await create_running(app, "site", user="bob")
        clock.advance(60)
        assert (await heartbeat(app, shown, user="alice", visible=True)).status_code == 200
        assert (await heartbeat(app, hidden, user="bob", visible=False)).status_code == 200
        assert (await row(app, hidden)).visible is False

        clock.advance(179)
        assert (await app.services.reaper.run_pass()).get("idle", 0) == 0
        clock.advance(1)
        with captured_logs() as logs:
            counts = await app.services.reaper.run_pass()
        assert counts["idle"] == 1
        assert (await status(app, hidden, user="bob"))["reason"] == "idle"
        assert (await status(app, shown, user="alice"))["status"] == "running"
        (idle,) = events(logs, "cleanup.idle")
        assert (idle["sandbox_id"], idle["visible"]) == (hidden, False)

        # Visible again: back to the full allowance.
        assert (await heartbeat(app, shown, visible=False)).status_code == 200
        assert (await heartbeat(app, shown, visible=True)).status_code == 200
        clock.advance(299)
        assert (await app.services.reaper.run_pass()).get("idle", 0) == 0
        clock.advance(1)
        assert (await app.services.reaper.run_pass())["idle"] == 1


async def test_a_sandbox_past_its_ttl_is_expired_even_while_watched(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, log_level="INFO", max_sandbox_ttl_seconds=600)
    async with running_app(settings, clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        reaper = app.services.reaper
        for _ in range(4):  # watched the whole time: never idle
            clock.advance(120)
            assert (await heartbeat(app, sandbox_id)).status_code == 200
            assert (await reaper.run_pass()).get("expired", 0) == 0
        clock.advance(120)  # 600 s after it was created
        with captured_logs() as logs:
            counts = await reaper.run_pass()
        assert counts["expired"] == 1
        assert counts.get("idle", 0) == 0
        gone = await status(app, sandbox_id)
        assert (gone["status"], gone["reason"]) == ("stopped", "expired")
        assert [e["sandbox_id"] for e in events(logs, "cleanup.expired")] == [sandbox_id]
        assert events(logs, "sandbox.deleted", sandbox_id=sandbox_id, reason="expired")
        assert sandbox_id not in await provider_ids(app)
        assert await app.services.quota.slot_holders("alice") == []


def _watched_rows(now: datetime, count: int, *, seen: datetime) -> list[Sandbox]:
    """Running rows whose browsers are watching (a heartbeat at `seen`), without sandboxes."""
    fields: dict[str, Any] = dict(
        project_id="p", kind="user", provider="local", source_kind="files", source_digest="d",
        status="running", port=3000, commands_run=0, visible=True, active=True, created_at=now,
        updated_at=now, ready_at=now, last_heartbeat_at=seen, charged_until=seen,
        expires_at=now + timedelta(hours=2),
    )  # fmt: skip
    return [Sandbox(id=new_sandbox_id(), user_id=f"watcher{i}", **fields) for i in range(count)]


async def test_idle_sandboxes_are_reaped_however_many_watched_ones_run_beside_them(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """The reaper reads what is due, batch after batch (here 2 a query), never the first N
    running rows: 650 watched rows inserted before the idle ones hide none of them."""
    settings = make_settings(tmp_path, backend, reaper_batch_size=2, reaper_concurrency=2)
    async with running_app(settings, clock=clock) as app:
        start = clock.now()
        async with app.services.db.database.writes() as s, s.begin():
            s.add_all(_watched_rows(start, 650, seen=start + timedelta(seconds=301)))
        idle = [await create_running(app, "site", user=f"idle{i}") for i in range(3)]
        clock.advance(301)
        counts = await app.services.reaper.run_pass()
        assert counts["idle"] == 3
        for i, sandbox_id in enumerate(idle):
            gone = await status(app, sandbox_id, user=f"idle{i}")
            assert (gone["status"], gone["reason"]) == ("stopped", "idle")
        assert await app.services.db.sandboxes.status_counts() == {"running": 650, "stopped": 3}


async def _build_of_another_replica(
    app: Running, clock: ManualClock, *, owner: str, user: str, lease_seconds: int = 60
) -> str:
    """What a replica leaves behind mid-build: the row in `building` under its lease, the slot it
    took and the provider sandbox it created (as PreviewService.create and the pipeline do)."""
    sandbox_id = new_sandbox_id()
    settings = app.settings
    labels = {
        "midori-preview": "1",
        "midori-preview/deployment": settings.preview_deployment,
        "midori-preview/sandbox-id": sandbox_id,
        "midori-preview/user-id": user,
        "midori-preview/project-id": "site",
    }
    now = clock.now()
    granted = await app.services.quota.acquire_slot(
        user, sandbox_id, limit=1, lease_seconds=app.service.slot_lease_seconds
    )
    assert granted.granted
    handle = await app.services.provider.create(
        SandboxSpec(sandbox_id, user, "site", labels=labels), timeout=30
    )
    await app.services.db.sandboxes.insert(
        Sandbox(
            id=sandbox_id, user_id=user, project_id="site", kind="user", provider="local",
            provider_id=handle.provider_id, source_kind="files", source_digest="0" * 64,
            template=None, status="building", port=3000, commands_run=2, visible=True,
            active=True, created_at=now, updated_at=now,
            expires_at=now + timedelta(seconds=settings.max_sandbox_ttl_seconds),
            lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds),
        )
    )  # fmt: skip
    return sandbox_id


async def test_a_build_whose_replica_stopped_renewing_its_lease_fails_as_lease_lost(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, backend, log_level="INFO", build_lease_seconds=60)
    async with running_app(settings, clock=clock) as app:
        reaper = app.services.reaper
        crashed = await _build_of_another_replica(app, clock, owner="replica-b", user="alice")
        assert (await create(app, "mine")).status_code == 409  # its slot is held

        clock.advance(30)
        alive = await _build_of_another_replica(app, clock, owner="replica-c", user="bob")
        clock.advance(29)  # replica-b's lease still runs
        assert (await reaper.run_pass()).get("leaseLost", 0) == 0
        assert (await row(app, crashed)).status == "building"

        clock.advance(2)  # replica-b's lease is over; replica-c's runs for another 29 s
        with captured_logs() as logs:
            counts = await reaper.run_pass()
        assert counts["leaseLost"] == 1
        failed = await status(app, crashed)
        assert (failed["status"], failed["reason"]) == ("error", "error:lease_lost")
        assert failed["error"]["step"] == "building"
        assert (await row(app, alive)).status == "building"
        assert crashed not in await provider_ids(app)
        assert alive in await provider_ids(app)
        assert events(logs, "cleanup.lease_lost", sandbox_id=crashed)
        assert events(logs, "sandbox.deleted", sandbox_id=crashed)

        assert await app.services.quota.slot_holders("alice") == []
        res = await create(app, "mine")  # the crashed build's slot is free
        assert res.status_code == 202, res.text
        await app.wait_until(res.json()["sandboxId"], "running")

        clock.advance(30)
        assert (await reaper.run_pass())["leaseLost"] == 1  # replica-c's turn
        assert (await row(app, alive)).reason == "error:lease_lost"


async def test_a_build_running_in_this_process_is_not_failed_for_its_lease(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    gate = "gate"  # the build runs until the test creates this file in its workspace
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        res = await create(app, "slow", build=f"while [ ! -f {gate} ]; do sleep 0.05; done")
        sandbox_id = res.json()["sandboxId"]

        async def building() -> bool:
            return (await row(app, sandbox_id)).status == "building"

        await eventually(building, within=30, what="the build step started")
        clock.advance(600)  # far past the lease, on the service clock only
        assert (await app.services.reaper.run_pass()).get("leaseLost", 0) == 0
        assert await building(), "the pass left the build alone"
        (workspace_of(app, sandbox_id) / "work" / gate).touch()
        assert (await app.wait_until(sandbox_id))["status"] == "running"


async def test_stopped_rows_leave_the_active_view_and_their_sources_after_retention(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, stopped_retention_seconds=7200)
    async with running_app(settings, clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        await stop(app, sandbox_id)
        admin = user_headers("root", admin=True)

        async def listed() -> list[str]:
            res = await app.client.get("/api/preview/admin/sandboxes", headers=admin)
            return [s["sandboxId"] for s in res.json()["sandboxes"]]

        clock.advance(7199)
        assert (await app.services.reaper.run_pass())["retired"] == 0
        assert await listed() == [sandbox_id]
        assert await app.services.db.sources.get(sandbox_id) is not None  # for live updates
        clock.advance(1)
        assert (await app.services.reaper.run_pass())["retired"] == 1
        assert await listed() == []
        assert await app.services.db.sources.get(sandbox_id) is None  # its served source too
        stats = (await app.client.get("/api/preview/cleanup", headers=admin)).json()["stats"]
        assert (stats["total"], stats["stopped"]) == (0, 0)
        assert (await status(app, sandbox_id))["status"] == "stopped"  # still answerable


async def test_two_replicas_reapers_at_once_stop_an_idle_sandbox_once(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, log_level="INFO")
    async with replicas(settings, clock) as (a, b):
        sandbox_id = await create_running(a, "site")
        clock.advance(301)
        with captured_logs() as logs:
            results = await asyncio.gather(
                a.services.reaper.run_pass(), b.services.reaper.run_pass()
            )
        assert sum(r.get("idle", 0) for r in results) == 1
        assert sorted("skipped" in r for r in results) == [False, True]  # one pass at a time
        assert len(events(logs, "cleanup.idle", sandbox_id=sandbox_id)) == 1
        assert len(events(logs, "sandbox.deleted", sandbox_id=sandbox_id)) == 1
        assert (await status(b, sandbox_id))["reason"] == "idle"


async def test_two_replicas_passes_without_the_lock_claim_each_sandbox_once(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    """Even if the pass lock were lost (or Redis down), each row is claimed by one replica."""
    settings = make_settings(tmp_path, pg_backend, log_level="INFO")
    async with replicas(settings, clock) as (a, b):
        ids = [await create_running(a, "site", user=f"user{i}") for i in range(4)]
        clock.advance(301)
        with captured_logs() as logs:
            results: list[dict[str, Any]] = await asyncio.gather(
                a.services.reaper._pass(), b.services.reaper._pass()
            )
        assert sum(r.get("idle", 0) for r in results) == 4
        for sandbox_id in ids:
            assert len(events(logs, "cleanup.idle", sandbox_id=sandbox_id)) == 1
            assert len(events(logs, "sandbox.deleted", sandbox_id=sandbox_id)) == 1
            assert (await row(a, sandbox_id)).reason == "idle"


async def test_a_heartbeat_between_the_reapers_read_and_its_claim_keeps_the_sandbox(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(301)
        (seen,) = await app.services.db.sandboxes.idle_rows(  # the reaper read it as idle…
            visible=True, seen_before=clock.now(), after=None, limit=10
        )
        assert (await heartbeat(app, sandbox_id)).status_code == 200  # …then the browser spoke
        claimed = await app.service.reap(
            seen, "idle", expect={"last_heartbeat_at": seen.last_heartbeat_at}
        )
        assert claimed is False
        assert (await status(app, sandbox_id))["status"] == "running"


async def test_a_lease_renewed_between_the_reapers_read_and_its_claim_keeps_the_build(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        repo = app.services.db.sandboxes
        now = clock.now()
        sandbox = Sandbox(
            id=new_sandbox_id(), user_id="alice", project_id="p", kind="user",
            provider="local", source_kind="files", source_digest="d", status="building",
            port=3000, commands_run=0, visible=True, active=True, created_at=now,
            updated_at=now, expires_at=now + timedelta(hours=2), lease_owner="gone-replica",
            lease_expires_at=now - timedelta(seconds=1),
        )  # fmt: skip
        await repo.insert(sandbox)
        (seen,) = await repo.stale_lease_rows(now)
        assert await repo.renew_lease(sandbox.id, "gone-replica", now + timedelta(seconds=60))
        assert await app.service.fail_lost_build(seen) is False
        assert (await row(app, sandbox.id)).status == "building"


async def test_two_replicas_sync_one_at_a_time(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with replicas(make_settings(tmp_path, pg_backend), clock) as (a, b):
        results = await asyncio.gather(a.services.reaper.sync(), b.services.reaper.sync())
        assert sorted("skipped" in r for r in results) == [False, True]
