"""The service on Daytona as it really behaves: deletes that meet 409s are handed to the reaper
and finished by it, creates cut short leave nothing once it ran, an exiting server fails the
preview at once, a quota 400 is `provider_quota`, a lagging listing does not close a live row —
and a fault run: many creates with rate limits, busy deletes and late answers end with no
sandbox left at Daytona and every row closed with its reason.

`DAYTONA_FAULT_RUN_CREATES` sets the fault run's size (the suite runs a small one)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.providers.test_daytona_provider import make_config
from tests.support.clock import ManualClock
from tests.support.daytona import CREATE, DELETE, DaytonaEmulator
from tests.support.servers import free_port
from tests.support.waiting import eventually

FAULT_RUN_CREATES = int(os.environ.get("DAYTONA_FAULT_RUN_CREATES", "12"))


@pytest.fixture
async def app(
    tmp_path: Path,
    pg_backend: Backend,
    emulator: DaytonaEmulator,
    clock: ManualClock,
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[Running, DaytonaEmulator]]:
    overrides: dict[str, Any] = {
        "daytona_list_lag_seconds": 30,
        "pending_delete_retry_seconds": 1,
        **getattr(request, "param", {}),
    }
    provider_overrides = overrides.pop("provider", {})
    settings = make_settings(tmp_path, pg_backend, **overrides)
    config = make_config(
        emulator, deployment=settings.preview_deployment, delete_deadline_seconds=0.3,
        **provider_overrides,
    )  # fmt: skip
    provider = DaytonaProvider(config)
    try:
        async with running_app(settings, provider=provider, clock=clock) as running:
            yield running, emulator
    finally:
        await provider.aclose()


async def create(running: Running, user: str = "alice", **extra: Any) -> str:
    body = {
        "projectId": "cafe",
        "files": [{"path": "index.html", "content": "<h1>hello</h1>"}],
        "port": free_port(),
        **extra,
    }
    res = await running.client.post("/api/preview/daytona", json=body, headers=user_headers(user))
    assert res.status_code == 202, res.text
    return str(res.json()["sandboxId"])


async def status_of(running: Running, sandbox_id: str, user: str = "alice") -> dict[str, Any]:
    res = await running.client.get(
        f"/api/preview/daytona/status?sandboxId={sandbox_id}", headers=user_headers(user)
    )
    body: dict[str, Any] = res.json()
    return body


async def reaped_to_the_end(
    running: Running,
    emulator: DaytonaEmulator,
    clock: ManualClock,
    within: float = 60,
    step: float = 61,
) -> None:
    """Run reaper passes (the service clock `step` seconds on each time: by default a minute,
    so that every retry is due) until Daytona holds no sandbox and no delete is pending."""
    reaper, deletes = running.services.reaper, running.service.deletes

    async def done() -> bool:
        clock.advance(step)
        await reaper.run_pass()
        return emulator.sandboxes == {} and await deletes.repo.count() == 0

    await eventually(done, within=within, interval=0.2, what="every sandbox deleted")


async def test_a_stop_whose_deletes_meet_409_is_finished_by_the_reaper(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    emulator.busy_deletes(1.0, seconds=2)
    sandbox_id = await create(running)
    assert (await running.wait_until(sandbox_id, "running"))["status"] == "running"
    stopped = await running.client.post(
        "/api/preview/daytona/stop", json={"sandboxId": sandbox_id}, headers=user_headers()
    )
    assert stopped.json()["status"] == "stopping", "Daytona answered 409: not gone yet"
    assert len(emulator.sandboxes) == 1
    await reaped_to_the_end(running, emulator, clock)
    final = await status_of(running, sandbox_id)
    assert final["status"] == "stopped" and final["reason"] == "user"
    assert emulator.count(DELETE) >= 2


@pytest.mark.parametrize("app", [{"sandbox_create_timeout_seconds": 1}], indirect=True)
async def test_a_create_cut_short_leaves_nothing_once_the_reaper_ran(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    emulator.hang_next_create(seconds=2)  # mid-transition: its deletes answer 409 meanwhile
    sandbox_id = await create(running)
    status = await running.wait_until(sandbox_id, "error")
    assert status["error"]["step"] == "create"
    await reaped_to_the_end(running, emulator, clock)


async def test_a_failed_build_whose_delete_meets_409_is_deleted_by_the_reaper(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    emulator.busy_deletes(1.0, seconds=2)
    sandbox_id = await create(running, install="exit 7")
    status = await running.wait_until(sandbox_id, "error")
    assert status["error"]["step"] == "install" and status["error"]["exitCode"] == 7
    assert len(emulator.sandboxes) == 1, "the delete met a state change in progress"
    await reaped_to_the_end(running, emulator, clock)


@pytest.mark.parametrize("app", [{"daytona_list_lag_seconds": 3}], indirect=True)
async def test_a_sandbox_that_failed_to_start_and_is_missing_from_listings_is_deleted_later(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    emulator.set_list_lag(1)  # the create's own clean-up cannot find it yet
    emulator.fail_next_create(reason="no runner available")
    status = await running.wait_until(await create(running), "error")
    assert status["error"]["step"] == "create"
    assert len(emulator.sandboxes) == 1, "missing from the listing: not found at once"
    # Service time runs about as fast as real time here: the emulator's lag is real time.
    await reaped_to_the_end(running, emulator, clock, step=0.25)


async def test_an_exiting_server_fails_a_daytona_preview_within_seconds(
    app: tuple[Running, DaytonaEmulator],
) -> None:
    running, _ = app
    loop = asyncio.get_running_loop()
    started = loop.time()
    sandbox_id = await create(running, start="echo 'port already in use' >&2; exit 3")
    status = await running.wait_until(sandbox_id, "error")
    assert loop.time() - started < running.settings.start_timeout_seconds / 4
    assert status["error"]["step"] == "start"
    assert status["error"]["exitCode"] == 3
    assert "port already in use" in "\n".join(status["logsTail"])


async def test_a_daytona_quota_400_is_provider_quota_with_a_clear_message(
    app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = app
    emulator.set_quota(cpu=0)
    status = await running.wait_until(await create(running), "error")
    assert status["error"]["code"] == "provider_quota"
    assert "total CPU limit" in status["error"]["message"]
    assert emulator.count(CREATE) == 1, "a quota refusal is not retried"


async def test_sync_keeps_a_fresh_row_missing_from_a_lagging_listing(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    emulator.set_list_lag(3600)  # every sandbox is missing from listings
    sandbox_id = await create(running)
    await running.wait_until(sandbox_id, "running")
    counts = await running.services.reaper.sync()
    assert "lost" not in counts
    assert (await status_of(running, sandbox_id))["status"] == "running"
    clock.advance(running.settings.daytona_list_lag_seconds + 1)
    counts = await running.services.reaper.sync()
    assert counts["lost"] == 1, "missing for longer than the lag: lost"


@pytest.mark.parametrize(
    "app",
    [
        {
            "sandbox_create_timeout_seconds": 3,
            "provider": {"retry_attempts": 10, "retry_deadline_seconds": 20},
        }
    ],
    indirect=True,
)
async def test_fault_run_leaves_no_sandbox_and_closes_every_row(
    app: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    running, emulator = app
    n = FAULT_RUN_CREATES
    emulator.rate_limit_creates(0.2, retry_after=0.2)  # Retry-After-sandbox-create
    emulator.busy_deletes(0.3, seconds=2)  # 409 "state change in progress" for a while
    # Made, but answered past the timeout while still `starting`: their deletes answer 409 then.
    emulator.slow_next_create(delay=5, times=max(1, n // 8), busy=True)
    # No listing lag here (its own tests have it): the reaper's passes jump the service clock a
    # minute at a time, far ahead of the emulator's real-time lag.
    users = [f"user-{i}" for i in range(n)]
    gate = asyncio.Semaphore(16)  # many at once, without making our own API the bottleneck

    async def gated(user: str) -> str:
        async with gate:
            return await create(running, user)

    ids = await asyncio.gather(*(gated(user) for user in users))
    statuses = [
        await running.wait_until(sid, user=user) for sid, user in zip(ids, users, strict=True)
    ]
    for sid, user, status in zip(ids, users, statuses, strict=True):
        if status["status"] == "running":
            await running.client.post(
                "/api/preview/daytona/stop", json={"sandboxId": sid}, headers=user_headers(user)
            )
    await reaped_to_the_end(running, emulator, clock, within=120)

    final = [await status_of(running, sid, user) for sid, user in zip(ids, users, strict=True)]
    outcomes = Counter((s["status"], s["reason"]) for s in final)
    print(f"\nfault run of {n} creates: {dict(outcomes)}; Daytona calls: {emulator.counts()}")
    assert emulator.sandboxes == {}, "no sandbox left at Daytona"
    assert all(s["status"] in ("stopped", "error") and s["reason"] for s in final), outcomes
    assert outcomes[("stopped", "user")] >= 1
    assert outcomes[("error", "error:create")] >= 1, "the late answers timed out"
    assert emulator.count(CREATE) > n, "rate-limited creates were retried"
