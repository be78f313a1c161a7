"""Admin API: GET /api/preview/cleanup (counts and the reaper's state) and POST with `start`,
`stop` (pause/resume on every replica), `cleanup` (a pass now), `sync` and `memory`; users get 403
on every admin route."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.quota.helpers import create, create_running, replicas, status, stop
from tests.support.clock import ManualClock

ADMIN = user_headers("root", admin=True)
CLEANUP = "/api/preview/cleanup"


async def stats(app: Running) -> dict[str, Any]:
    res = await app.client.get(CLEANUP, headers=ADMIN)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["success"] is True
    return dict(body["stats"])


async def act(app: Running, action: str) -> dict[str, Any]:
    res = await app.client.post(CLEANUP, json={"action": action}, headers=ADMIN)
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["success"], body["action"]) == (True, action)
    return dict(body["result"])


ADMIN_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", CLEANUP, None),
    *(("POST", CLEANUP, {"action": a}) for a in ("start", "stop", "cleanup", "sync", "memory")),
    ("GET", "/api/preview/usage/report?from=2026-01-01&to=2026-01-01", None),
    ("GET", "/api/preview/admin/sandboxes", None),
]


async def test_admin_routes_are_forbidden_to_users(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        for method, path, payload in ADMIN_ROUTES:
            res = await app.client.request(method, path, json=payload, headers=user_headers("eve"))
            assert res.status_code == 403, (method, path, payload, res.text)
            assert res.json()["error"]["code"] == "forbidden"
            anonymous = await app.client.request(method, path, json=payload)
            assert anonymous.status_code == 401, (method, path, payload)
        assert await app.services.reaper.last_run() == {}  # nothing ran, nothing paused
        for method, path, payload in ADMIN_ROUTES:
            res = await app.client.request(method, path, json=payload, headers=ADMIN)
            assert res.status_code == 200, (method, path, payload, res.text)


async def test_cleanup_stats_count_sandboxes_and_describe_the_reaper(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        empty = await stats(app)
        assert {k: empty[k] for k in ("total", "running", "stopped", "creating", "error")} == {
            "total": 0, "running": 0, "stopped": 0, "creating": 0, "error": 0,
        }  # fmt: skip
        assert empty["isServiceRunning"] is False  # REAPER_ENABLED=false in this app
        assert (empty["lastRunAt"], empty["nextRunAt"], empty["lastRun"]) == (None, None, {})

        running = await create_running(app, "a")
        stopped = await create_running(app, "b", user="bob")
        await stop(app, stopped, user="bob")
        failed = await create(app, "c", user="carol", build="exit 3")
        await app.wait_until(failed.json()["sandboxId"], "error", user="carol")
        building = await create(app, "d", user="dave", build="sleep 300")  # until stopped
        assert building.status_code == 202

        got = await stats(app)
        assert {k: got[k] for k in ("total", "running", "stopped", "creating", "error")} == {
            "total": 4, "running": 1, "stopped": 1, "creating": 1, "error": 1,
        }  # fmt: skip
        await app.service.stop(building.json()["sandboxId"], reason="admin")

        clock.advance(301)
        result = await act(app, "cleanup")
        assert result["idle"] == 1
        assert (await status(app, running))["reason"] == "idle"
        after = await stats(app)
        assert after["lastRunAt"] == clock.now().isoformat()
        assert after["lastRun"]["idle"] == 1
        assert (after["running"], after["stopped"]) == (0, 3)


async def test_stop_and_start_pause_and_resume_the_reaper_on_every_replica(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, reaper_enabled=True)
    async with replicas(settings, clock) as (a, b):
        before = await stats(a)
        assert before["isServiceRunning"] is True
        assert before["nextRunAt"] is not None

        assert await act(a, "stop") == {"paused": True}
        for app in (a, b):
            paused = await stats(app)
            assert (paused["isServiceRunning"], paused["paused"]) == (False, True)
            assert paused["nextRunAt"] is None

        sandbox_id = await create_running(a, "site")
        clock.advance(301)
        assert await b.services.reaper.tick() is None  # the other replica is paused too
        assert (await status(a, sandbox_id))["status"] == "running"

        assert await act(b, "start") == {"paused": False}
        assert (await stats(a))["isServiceRunning"] is True
        counts = await a.services.reaper.tick()
        assert counts is not None
        assert counts["idle"] == 1
        assert (await status(a, sandbox_id))["reason"] == "idle"


async def test_sync_action_reconciles_and_rebuilds_redis(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        quota = app.services.quota
        await quota.release_slot("alice", sandbox_id)  # Redis lost the slot
        result = await act(app, "sync")
        assert result["slotsRebuilt"] == 1
        assert await quota.slot_holders("alice") == [sandbox_id]
        got = await stats(app)
        assert got["lastSyncAt"] == clock.now().isoformat()
        assert got["lastSync"]["slotsRebuilt"] == 1


async def test_memory_action_prunes_ephemeral_state_past_retention(
    tmp_path: Path, pg_backend: Backend
) -> None:
    # Event streams are stamped by Redis' real clock: service time starts at real time here.
    clock = ManualClock(datetime.now(UTC))
    settings = make_settings(tmp_path, pg_backend, state_retention_seconds=86400)
    async with running_app(settings, clock=clock) as app:
        res = await app.client.post(
            "/api/preview/daytona",
            json={"projectId": "site", "files": [{"path": "index.html", "content": "hi"}]},
            headers={**user_headers("alice"), "Idempotency-Key": "k1"},
        )
        sandbox_id = res.json()["sandboxId"]
        await app.wait_until(sandbox_id, "running")
        await stop(app, sandbox_id)
        stream = app.services.events.key(sandbox_id)
        assert await app.services.redis.exists(stream)

        assert await act(app, "memory") == {"idempotencyKeys": 0, "eventStreams": 0}
        clock.advance(86400 + 60)
        assert await act(app, "memory") == {"idempotencyKeys": 1, "eventStreams": 1}
        assert not await app.services.redis.exists(stream)
        assert await app.services.db.idempotency.get("alice", "k1") is None


async def test_every_pass_prunes_idempotency_keys_past_their_ttl(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    """IDEMPOTENCY_TTL_SECONDS, not the retention of other ephemeral state, bounds a key's life."""
    settings = make_settings(
        tmp_path, pg_backend, idempotency_ttl_seconds=7200, state_retention_seconds=3600
    )
    async with running_app(settings, clock=clock) as app:
        res = await app.client.post(
            "/api/preview/daytona",
            json={"projectId": "site", "files": [{"path": "index.html", "content": "hi"}]},
            headers={**user_headers("alice"), "Idempotency-Key": "k1"},
        )
        await app.wait_until(res.json()["sandboxId"], "running")
        reaper = app.services.reaper
        assert (await reaper.run_pass())["idempotencyKeysPruned"] == 0
        clock.advance(3601)
        assert (await reaper.run_pass())["idempotencyKeysPruned"] == 0
        clock.advance(3600)
        assert (await reaper.run_pass())["idempotencyKeysPruned"] == 1
        assert await app.services.db.idempotency.get("alice", "k1") is None


async def test_an_unknown_action_is_a_validation_error(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        res = await app.client.post(CLEANUP, json={"action": "explode"}, headers=ADMIN)
        assert res.status_code == 422
        assert res.json()["error"]["code"] == "validation_error"
        assert await app.services.reaper.last_run() == {}
