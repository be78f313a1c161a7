"""Exact usage accounting: charged from `running` by heartbeats (each charge capped at one interval
plus grace), once per heartbeat however many copies arrive, split at midnight in USAGE_TIMEZONE;
the daily cap stops the sandbox at the heartbeat that reaches it and refuses creates until the day
rolls over; `usage` on heartbeat/status/GET /usage with the quota_low warning; the Redis mirror is
rebuilt from the ledger; the admin usage report by user and by project."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.conftest import Backend, make_settings, running_app, user_headers
from tests.quota.helpers import (
    create,
    create_running,
    heartbeat,
    ledger,
    ledger_total,
    mirror,
    status,
    stop,
)
from tests.support.clock import ManualClock

DAY = "2026-01-01"  # the ManualClock starts at 2026-01-01 12:00 UTC


async def test_heartbeats_charge_the_time_since_running_and_answer_usage(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        hb = await heartbeat(app, sandbox_id)
        assert hb.status_code == 200, hb.text
        out = hb.json()
        assert out["status"] == "running"
        assert out["nextHeartbeatSeconds"] == 120
        assert out["usage"]["usedSecondsToday"] == 120
        assert out["usage"]["remainingSecondsToday"] == 3480
        assert out["usage"]["warning"] is None
        assert out["usage"]["day"] == DAY
        assert await ledger(app) == {("alice", DAY, "site"): 120}
        assert await mirror(app, "alice", DAY) == 120

        clock.advance(30)
        assert (await heartbeat(app, sandbox_id)).json()["usage"]["usedSecondsToday"] == 150
        assert (await status(app, sandbox_id))["usage"]["usedSecondsToday"] == 150
        mine = await app.client.get("/api/preview/usage", headers=user_headers("alice"))
        assert mine.status_code == 200
        assert mine.json()["usedSecondsToday"] == 150
        assert mine.json()["remainingSecondsToday"] == 3450
        assert mine.json()["resetAt"] == "2026-01-02T00:00:00Z"
        bob = await app.client.get("/api/preview/usage", headers=user_headers("bob"))
        assert bob.json()["usedSecondsToday"] == 0


async def test_a_charge_is_capped_at_one_interval_plus_grace(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    """A browser that went away and came back is not billed for the gap."""
    settings = make_settings(tmp_path, pg_backend, heartbeat_grace_seconds=30)
    async with running_app(settings, clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(1000)
        assert (await heartbeat(app, sandbox_id)).status_code == 200
        assert await ledger_total(app) == 150
        clock.advance(150)  # exactly interval + grace: charged in full
        assert (await heartbeat(app, sandbox_id)).status_code == 200
        assert await ledger_total(app) == 300


async def test_duplicate_and_concurrent_heartbeats_charge_once(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        answers = await asyncio.gather(*(heartbeat(app, sandbox_id) for _ in range(10)))
        assert [r.status_code for r in answers] == [200] * 10, [r.text for r in answers]
        assert await ledger_total(app) == 120
        assert await mirror(app, "alice", DAY) == 120

        again = await heartbeat(app, sandbox_id)  # a late duplicate at the same instant
        assert again.json()["usage"]["usedSecondsToday"] == 120
        assert await ledger_total(app) == 120

        clock.advance(120)
        answers = await asyncio.gather(*(heartbeat(app, sandbox_id) for _ in range(10)))
        assert {r.status_code for r in answers} == {200}
        assert await ledger_total(app) == 240
        assert await mirror(app, "alice", DAY) == 240


async def test_a_three_hour_run_is_charged_exactly_the_cap_and_stopped_when_it_is_reached(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    await _run_to_the_cap(tmp_path, backend, clock, step=120, beats_to_cap=30)


async def test_the_charge_that_crosses_the_cap_is_cut_to_the_cap(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    # 27 heartbeats of 130 s make 3510 s: the 28th is charged 90 s, not 130 s.
    await _run_to_the_cap(tmp_path, pg_backend, clock, step=130, beats_to_cap=28)


async def _run_to_the_cap(
    tmp_path: Path, backend: Backend, clock: ManualClock, *, step: int, beats_to_cap: int
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        gone = None
        beats = 0
        for beats in range(1, 3 * 3600 // step + 1):  # up to three hours of heartbeats
            clock.advance(step)
            res = await heartbeat(app, sandbox_id)
            if res.status_code != 200:
                gone = res
                break
            used = res.json()["usage"]["usedSecondsToday"]
            assert used == beats * step
            assert used < 3600
        assert gone is not None, "never stopped"
        assert beats == beats_to_cap  # the heartbeat that reached the cap stopped it
        assert gone.status_code == 410, gone.text
        err = gone.json()["error"]
        assert err["code"] == "daily_quota_exhausted"
        assert err["resetAt"] == "2026-01-02T00:00:00+00:00"

        assert await ledger(app) == {("alice", DAY, "site"): 3600}
        assert await mirror(app, "alice", DAY) == 3600
        row = await status(app, sandbox_id)
        assert (row["status"], row["reason"]) == ("stopped", "quota")
        assert row["usage"]["usedSecondsToday"] == 3600
        assert row["usage"]["remainingSecondsToday"] == 0
        assert row["usage"]["warning"] == "quota_low"
        listed = await app.services.provider.list_sandboxes({"midori-preview": "1"})
        assert sandbox_id not in {i.sandbox_id for i in listed}

        clock.advance(step)  # the tab keeps beating: still gone, nothing more charged
        assert (await heartbeat(app, sandbox_id)).status_code == 410
        assert await ledger_total(app) == 3600

        refused = await create(app, "other")
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "daily_quota_exhausted"
        assert refused.json()["error"]["resetAt"] == "2026-01-02T00:00:00+00:00"
        assert (await create(app, "other", user="bob")).status_code == 202

        clock.set(datetime(2026, 1, 2, 0, 0, 1, tzinfo=UTC))  # a new day
        res = await create(app, "other")
        assert res.status_code == 202, res.text
        await app.service.wait_idle()


async def test_quota_low_warning_when_little_time_is_left(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path, pg_backend, daily_usage_cap_seconds=600, usage_warning_seconds=300
    )
    async with running_app(settings, clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        seen = []
        for _ in range(4):
            clock.advance(100)
            usage = (await heartbeat(app, sandbox_id)).json()["usage"]
            seen.append((usage["remainingSecondsToday"], usage["warning"]))
        assert seen == [(500, None), (400, None), (300, "quota_low"), (200, "quota_low")]
        assert (await status(app, sandbox_id))["usage"]["warning"] == "quota_low"
        mine = await app.client.get("/api/preview/usage", headers=user_headers("alice"))
        assert mine.json()["warning"] == "quota_low"


@pytest.mark.parametrize("tz", ["UTC", "Asia/Bangkok"])
async def test_a_run_across_midnight_splits_its_seconds_between_the_days(
    tmp_path: Path, backend: Backend, clock: ManualClock, tz: str
) -> None:
    local = ZoneInfo(tz)
    clock.set(datetime(2026, 3, 14, 23, 59, 0, tzinfo=local).astimezone(UTC))
    async with running_app(make_settings(tmp_path, backend, usage_timezone=tz), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        res = await heartbeat(app, sandbox_id)
        assert res.status_code == 200, res.text
        assert await ledger(app) == {
            ("alice", "2026-03-14", "site"): 60,
            ("alice", "2026-03-15", "site"): 60,
        }
        usage = res.json()["usage"]
        assert (usage["day"], usage["usedSecondsToday"]) == ("2026-03-15", 60)
        reset = datetime.fromisoformat(usage["resetAt"])
        assert reset == datetime(2026, 3, 16, tzinfo=local)
        assert await mirror(app, "alice", "2026-03-14") == 60
        assert await mirror(app, "alice", "2026-03-15") == 60


async def test_a_user_stop_charges_up_to_the_stop(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        await heartbeat(app, sandbox_id)
        clock.advance(45)
        assert (await stop(app, sandbox_id)).json()["status"] == "stopped"
        assert await ledger_total(app) == 165
        assert await mirror(app, "alice", DAY) == 165
        clock.advance(120)
        late = await heartbeat(app, sandbox_id)
        assert late.status_code == 410
        assert late.json()["error"] == {
            "code": "sandbox_stopped",
            "message": late.json()["error"]["message"],
            "sandboxId": sandbox_id,
            "reason": "user",
        }
        assert (await stop(app, sandbox_id)).status_code == 200  # idempotent, not charged
        assert await ledger_total(app) == 165


async def test_a_lost_usage_mirror_is_rebuilt_from_the_ledger(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(120)
        await heartbeat(app, sandbox_id)
        quota = app.services.quota

        await app.services.redis.delete(quota.usage_key("alice", DAY))
        mine = await app.client.get("/api/preview/usage", headers=user_headers("alice"))
        assert mine.json()["usedSecondsToday"] == 120
        assert await mirror(app, "alice", DAY) == 120

        await app.services.redis.delete(quota.usage_key("alice", DAY))
        clock.advance(120)
        assert (await heartbeat(app, sandbox_id)).json()["usage"]["usedSecondsToday"] == 240
        assert await mirror(app, "alice", DAY) == 240
        assert await ledger_total(app) == 240


async def test_usage_report_by_user_and_by_project(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        # Day 1: alice watches p1 for 120 s and stops it; bob watches p1 for 60 s and stops it;
        # alice watches p2 for 100 s and walks away (the reaper stops it as idle).
        a1 = await create_running(app, "p1")
        clock.advance(120)
        await heartbeat(app, a1)
        await stop(app, a1)
        b1 = await create_running(app, "p1", user="bob")
        clock.advance(60)
        await stop(app, b1, user="bob")
        a2 = await create_running(app, "p2")
        clock.advance(100)
        await heartbeat(app, a2)
        clock.advance(301)
        assert (await app.services.reaper.run_pass())["idle"] == 1
        # Day 2: alice watches p1 for 30 s.
        clock.set(datetime(2026, 1, 2, 9, 0, tzinfo=UTC))
        a3 = await create_running(app, "p1", content="<h1>v2</h1>")
        clock.advance(30)
        await stop(app, a3)

        admin = user_headers("root", admin=True)
        url = "/api/preview/usage/report"
        res = await app.client.get(
            url, params={"from": "2026-01-01", "to": "2026-01-02", "groupBy": "user"}, headers=admin
        )
        assert res.status_code == 200, res.text
        report = res.json()
        assert report["groupBy"] == "user"
        rows = {(r["day"], r["key"]): r for r in report["rows"]}
        assert set(rows) == {
            ("2026-01-01", "alice"),
            ("2026-01-01", "bob"),
            ("2026-01-02", "alice"),
        }
        alice1 = rows[("2026-01-01", "alice")]
        assert alice1["previewSeconds"] == 220
        assert alice1["sandboxesCreated"] == 2
        assert alice1["stoppedByReason"] == {"user": 1, "idle": 1}
        assert alice1["commandsRun"] == 2  # one start command each
        bob1 = rows[("2026-01-01", "bob")]
        assert (bob1["previewSeconds"], bob1["sandboxesCreated"]) == (60, 1)
        assert bob1["stoppedByReason"] == {"user": 1}
        alice2 = rows[("2026-01-02", "alice")]
        assert (alice2["previewSeconds"], alice2["stoppedByReason"]) == (30, {"user": 1})
        assert report["totals"] == {"previewSeconds": 310, "sandboxesCreated": 4, "commandsRun": 4}

        res = await app.client.get(
            url, params={"from": "2026-01-01", "to": "2026-01-01", "groupBy": "project"},
            headers=admin,
        )  # fmt: skip
        rows = {(r["day"], r["key"]): r for r in res.json()["rows"]}
        assert set(rows) == {("2026-01-01", "p1"), ("2026-01-01", "p2")}
        assert rows[("2026-01-01", "p1")]["previewSeconds"] == 180
        assert rows[("2026-01-01", "p1")]["sandboxesCreated"] == 2
        assert rows[("2026-01-01", "p1")]["stoppedByReason"] == {"user": 2}
        assert rows[("2026-01-01", "p2")]["previewSeconds"] == 100
        assert rows[("2026-01-01", "p2")]["stoppedByReason"] == {"idle": 1}

        backwards = await app.client.get(
            url, params={"from": "2026-01-02", "to": "2026-01-01"}, headers=admin
        )
        assert backwards.status_code == 422
        forbidden = await app.client.get(
            url, params={"from": "2026-01-01", "to": "2026-01-02"}, headers=user_headers("alice")
        )
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["code"] == "forbidden"


async def test_two_sandboxes_of_one_user_charging_at_once_stay_within_the_cap(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path, pg_backend, max_concurrent_sandboxes_per_user=2, daily_usage_cap_seconds=200
    )
    async with running_app(settings, clock=clock) as app:
        first = await create_running(app, "a")
        second = await create_running(app, "b")
        clock.advance(150)
        repo = app.services.db.sandboxes
        charge = repo.charge
        answers = []

        async def the_other_heartbeat_lands_first(*args: Any, **kwargs: Any) -> bool:
            repo.charge = charge
            answers.append(await heartbeat(app, second))
            return bool(await charge(*args, **kwargs))

        repo.charge = the_other_heartbeat_lands_first
        answers.append(await heartbeat(app, first))
        repo.charge = charge
        assert await ledger_total(app) <= 200


async def test_time_behind_a_hidden_tab_is_not_charged(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(60)
        assert (await heartbeat(app, sandbox_id, visible=False)).status_code == 200
        assert await ledger_total(app) == 60, "watched until the tab was hidden"
        clock.advance(100)  # hidden: the client sends nothing
        back = await heartbeat(app, sandbox_id, visible=True)
        assert back.json()["usage"]["usedSecondsToday"] == 60, "nobody watched a hidden tab"
        clock.advance(45)
        await heartbeat(app, sandbox_id)
        assert await ledger_total(app) == 105
        assert await mirror(app, "alice", DAY) == 105
