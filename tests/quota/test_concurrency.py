"""Concurrency quota: one atomic Redis script per slot acquire (also in the embedded store), leases
that free a crashed holder's slot, idempotent release; over the limit → 409 with the live ids and
what to do, `replace: true` stops the oldest; the same source answers the live preview; 50 creates
at once across two replicas make one sandbox; the create rate limit; Redis down → 503."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from midori_preview.db.models import Sandbox
from midori_preview.quota.service import QuotaService
from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.quota.helpers import (
    PrivateRedis,
    create,
    create_running,
    heartbeat,
    ledger_total,
    replicas,
    status,
    stop,
)
from tests.support.clock import ManualClock
from tests.support.waiting import eventually


async def sandbox_count(running: Running, user: str) -> int:
    async with running.services.db.database.writes() as s:
        return int(
            await s.scalar(select(func.count()).select_from(Sandbox).where(Sandbox.user_id == user))
            or 0
        )


# --- the slot script ----------------------------------------------------------------------------


async def open_connections(quota: QuotaService, n: int) -> None:
    """Open `n` connections one at a time before a burst of `n` concurrent calls: each connect
    then has its own connect timeout, instead of `n` of them racing on one starved event loop
    (seen under a load of 12 on 2 cores: "Timeout connecting to server"). The calls themselves
    stay concurrent: what is proved is the script's atomicity, not connection setup."""
    pool = quota.redis.connection_pool
    held = [await pool.get_connection() for _ in range(n)]
    for connection in held:
        await pool.release(connection)


async def test_slot_script_grants_exactly_the_limit_to_concurrent_acquires(
    quota: QuotaService,
) -> None:
    await open_connections(quota, 50)
    results = await asyncio.gather(
        *(quota.acquire_slot("u1", f"sb{i}", limit=1, lease_seconds=60) for i in range(50))
    )
    granted = [f"sb{i}" for i, r in enumerate(results) if r.granted]
    assert len(granted) == 1
    assert await quota.slot_holders("u1") == granted
    refused = [r for r in results if not r.granted]
    assert all(r.holders == granted for r in refused)

    results = await asyncio.gather(
        *(quota.acquire_slot("u2", f"sb{i}", limit=3, lease_seconds=60) for i in range(50))
    )
    assert sum(r.granted for r in results) == 3
    assert len(await quota.slot_holders("u2")) == 3


async def test_acquiring_a_slot_one_already_holds_renews_it(quota: QuotaService) -> None:
    assert (await quota.acquire_slot("u", "a", limit=1, lease_seconds=60)).granted
    assert (await quota.acquire_slot("u", "a", limit=1, lease_seconds=60)).granted
    assert await quota.slot_holders("u") == ["a"]


async def test_a_crashed_holders_slot_frees_after_its_lease(quota: QuotaService) -> None:
    """The holder never releases (its process died); its lease runs out on Redis' own clock."""
    assert (await quota.acquire_slot("u", "crashed", limit=1, lease_seconds=60)).granted
    refused = await quota.acquire_slot("u", "next", limit=1, lease_seconds=60)
    assert not refused.granted
    assert refused.holders == ["crashed"]

    # Its last renewal (then it crashed) gave it one more second. Redis' clock is the real one,
    # which no test clock can move: wait for the slot, and check it was not freed early.
    renewed_at = time.time()
    assert (await quota.acquire_slot("u", "crashed", limit=1, lease_seconds=1)).granted

    async def freed() -> bool:
        result = await quota.acquire_slot("u", "next", limit=1, lease_seconds=60)
        assert result.granted or result.holders == ["crashed"], result
        return result.granted

    await eventually(freed, within=10, what="the crashed holder's slot was freed")
    # Redis' TIME and time.time() read the same host clock (deadlines are in whole ms).
    assert time.time() >= renewed_at + 1 - 0.001, "freed before its lease ran out"
    assert await quota.slot_holders("u") == ["next"]


async def test_release_is_idempotent(quota: QuotaService) -> None:
    await quota.release_slot("u", "never-held")  # nothing held: no error
    assert (await quota.acquire_slot("u", "a", limit=1, lease_seconds=60)).granted
    await quota.release_slot("u", "a")
    await quota.release_slot("u", "a")
    assert await quota.slot_holders("u") == []
    assert (await quota.acquire_slot("u", "b", limit=1, lease_seconds=60)).granted
    await quota.release_slot("u", "a")  # a late duplicate release does not free b's slot
    assert await quota.slot_holders("u") == ["b"]
    assert not (await quota.acquire_slot("u", "c", limit=1, lease_seconds=60)).granted


# --- through the API ----------------------------------------------------------------------------


async def test_over_the_limit_answers_409_with_the_live_ids_and_what_to_do(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        first = await create_running(app, "one")

        res = await create(app, "two")
        assert res.status_code == 409, res.text
        err = res.json()["error"]
        assert err["code"] == "concurrency_limit"
        assert err["activeSandboxIds"] == [first]
        assert err["limit"] == 1
        assert "Stop one" in err["message"]
        assert '"replace": true' in err["message"]

        other = await create(app, "two", user="bob")  # a limit per user, not per service
        assert other.status_code == 202, other.text

        assert (await stop(app, first)).status_code == 200
        again = await create(app, "two")  # the stop released the slot
        assert again.status_code == 202, again.text
        await app.service.wait_idle()


async def test_replace_stops_the_oldest_preview_with_reason_replaced(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, backend, max_concurrent_sandboxes_per_user=2)
    async with running_app(settings, clock=clock) as app:
        oldest = await create_running(app, "one")
        clock.advance(5)
        newer = await create_running(app, "two")
        clock.advance(55)

        assert (await create(app, "three")).status_code == 409
        res = await create(app, "three", replace=True)
        assert res.status_code == 202, res.text
        third = res.json()["sandboxId"]
        await app.wait_until(third, "running")

        gone = await status(app, oldest)
        assert (gone["status"], gone["reason"]) == ("stopped", "replaced")
        assert (await status(app, newer))["status"] == "running"
        assert set(await app.services.quota.slot_holders("alice")) == {newer, third}
        # The user chose to replace it while watching: charged up to the moment it stopped.
        assert await ledger_total(app) == 60
        hb = await heartbeat(app, oldest)
        assert hb.status_code == 410
        assert hb.json()["error"]["reason"] == "replaced"


async def test_same_project_and_source_returns_the_live_preview(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        res = await create(app, "site")
        assert res.status_code == 202
        sandbox_id = res.json()["sandboxId"]

        building = await create(app, "site")  # still building: the same preview
        assert building.status_code == 200, building.text
        assert building.json()["sandboxId"] == sandbox_id

        await app.wait_until(sandbox_id, "running")
        live = await create(app, "site")
        assert live.status_code == 200
        assert live.json()["sandboxId"] == sandbox_id
        assert live.json()["status"] == "running"

        changed = await create(app, "site", content="<h1>changed</h1>")
        assert changed.status_code == 409  # a different source is a new preview
        assert await sandbox_count(app, "alice") == 1

        await stop(app, sandbox_id)
        after = await create(app, "site")
        assert after.status_code == 202
        assert after.json()["sandboxId"] != sandbox_id
        await app.service.wait_idle()


async def test_create_rate_limit_answers_429_with_retry_after(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path, backend, create_rate_per_minute=3, max_concurrent_sandboxes_per_user=5
    )
    async with running_app(settings, clock=clock) as app:
        for project in ("a", "b", "c"):
            assert (await create(app, project)).status_code == 202
        res = await create(app, "d")
        assert res.status_code == 429, res.text
        err = res.json()["error"]
        assert err["code"] == "rate_limited"
        retry = int(res.headers["Retry-After"])
        assert 1 <= retry <= 60
        assert err["retryAfterSeconds"] == retry
        assert await sandbox_count(app, "alice") == 3

        assert (await create(app, "d", user="bob")).status_code == 202  # per user
        await app.service.wait_idle()


# --- many replicas ------------------------------------------------------------------------------


async def _concurrent_creates(apps: list[Running], n: int, *, same_source: bool) -> list[Any]:
    """`n` creates at once, spread over `apps`. One user's admissions queue on a lock with a
    bounded wait; on a loaded machine the tail of the queue may be told 503 "try again", and
    does, as a client would: the answer that counts is the one after the queue."""

    async def one(i: int) -> Any:
        content = "<h1>same</h1>" if same_source else f"<h1>{i}</h1>"
        for _ in range(5):
            res = await create(apps[i % len(apps)], "site", content=content)
            if res.status_code != 503 or res.json()["error"]["code"] != "quota_unavailable":
                break
        return res

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def test_fifty_concurrent_creates_across_two_replicas_make_one_sandbox(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, create_rate_per_minute=1000)
    async with replicas(settings, clock) as apps:
        answers = await _concurrent_creates(apps, 50, same_source=False)

        codes = Counter(r.status_code for r in answers)
        assert codes == {202: 1, 409: 49}, codes
        (winner,) = [r.json()["sandboxId"] for r in answers if r.status_code == 202]
        for r in answers:
            if r.status_code == 409:
                assert r.json()["error"]["activeSandboxIds"] == [winner]
        assert await sandbox_count(apps[0], "alice") == 1
        assert await apps[1].services.quota.slot_holders("alice") == [winner]
        for app in apps:
            await app.service.wait_idle()
        assert (await status(apps[1], winner))["status"] == "running"


async def test_concurrent_identical_creates_across_two_replicas_share_one_preview(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, pg_backend, create_rate_per_minute=1000)
    async with replicas(settings, clock) as apps:
        answers = await _concurrent_creates(apps, 20, same_source=True)

        codes = Counter(r.status_code for r in answers)
        assert codes == {202: 1, 200: 19}, codes
        assert len({r.json()["sandboxId"] for r in answers}) == 1
        assert await sandbox_count(apps[0], "alice") == 1
        for app in apps:
            await app.service.wait_idle()


# --- Redis unreachable --------------------------------------------------------------------------


async def test_redis_outage_fails_creates_closed_while_heartbeats_and_status_keep_working(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    redis = PrivateRedis(tmp_path / "redis")
    await redis.start()
    settings = make_settings(tmp_path, pg_backend, redis_url=redis.url)
    try:
        async with running_app(settings, clock=clock) as app:
            sandbox_id = await create_running(app, "site")
            clock.advance(120)
            assert (await heartbeat(app, sandbox_id)).status_code == 200
            # The scheduler's flush (every HEARTBEAT_FLUSH_INTERVAL_SECONDS) wrote it behind
            # before Redis died: links still queued in a Redis that dies without persistence
            # are lost (charged less, never twice).
            await app.service.flush_heartbeats()

            await redis.kill()

            res = await create(app, "other", user="bob")
            assert res.status_code == 503, res.text
            assert res.json()["error"]["code"] == "quota_unavailable"
            assert (await app.client.get("/readyz")).json()["redis"] is False

            clock.advance(120)
            hb = await heartbeat(app, sandbox_id)
            assert hb.status_code == 200, hb.text
            assert hb.json()["usage"]["usedSecondsToday"] == 240  # from Postgres
            assert (await status(app, sandbox_id))["usage"]["usedSecondsToday"] == 240
            mine = await app.client.get("/api/preview/usage", headers=user_headers("alice"))
            assert mine.status_code == 200
            assert mine.json()["usedSecondsToday"] == 240
            assert await ledger_total(app) == 240

            clock.advance(30)
            stopped = await stop(app, sandbox_id)
            assert stopped.status_code == 200, stopped.text
            assert stopped.json()["status"] == "stopped"
            assert await ledger_total(app) == 270

            await redis.start()  # back, but empty (no persistence): sync rebuilds it
            await app.services.reaper.sync()
            assert (await status(app, sandbox_id))["usage"]["usedSecondsToday"] == 270
            again = await create(app, "other")
            assert again.status_code == 202, again.text
            await app.service.wait_idle()
    finally:
        await redis.kill()


async def test_app_starts_with_redis_down_and_refuses_creates(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    redis = PrivateRedis(tmp_path / "redis")  # not started: nothing listens on its port
    settings = make_settings(tmp_path, pg_backend, redis_url=redis.url)
    try:
        async with running_app(settings, clock=clock) as app:
            res = await create(app, "site")
            assert res.status_code == 503
            assert res.json()["error"]["code"] == "quota_unavailable"
            assert "unreachable" in res.json()["error"]["message"]
            mine = await app.client.get("/api/preview/usage", headers=user_headers("alice"))
            assert mine.status_code == 200
            assert mine.json()["usedSecondsToday"] == 0
            assert await sandbox_count(app, "alice") == 0
            await redis.start()  # for the fixture's key clean-up on the way out
            res = await create(app, "site")  # it comes back: creates are admitted again
            assert res.status_code == 202, res.text
            await app.wait_until(res.json()["sandboxId"], "running")
    finally:
        await redis.kill()
