"""The reaper's batch stops (`previews.reaping`): a batch of due rows claimed in one
compare-and-set that still decides per row, deletes that fail for some rows of a batch, and every
row's events, metrics and logs as a single stop gives them. On SQLite and on Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from midori_preview.db.models import Sandbox
from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, Running, make_settings, running_app
from tests.providers.test_daytona_provider import make_config
from tests.providers.test_daytona_service_faults import create as create_on_daytona
from tests.quota.helpers import (
    captured_logs,
    create_running,
    events,
    heartbeat,
    ledger_total,
    row,
    status,
)
from tests.support.clock import ManualClock
from tests.support.daytona import DaytonaEmulator
from tests.support.waiting import eventually

STOPS = "midori_preview_sandbox_stops_total"


def stops(reason: str) -> float:
    return REGISTRY.get_sample_value(STOPS, {"reason": reason}) or 0.0


async def statuses(app: Running, sandbox_id: str) -> list[tuple[str, str | None]]:
    """The sandbox's `status` events: (status, reason)."""
    found = await app.services.events.read(sandbox_id, block_ms=None)
    return [(e.data["status"], e.data.get("reason")) for e in found if e.kind == "status"]


async def idle_now(app: Running, clock: ManualClock) -> list[Sandbox]:
    """What the reaper reads as idle (visible tabs) at this moment."""
    return await app.services.db.sandboxes.idle_rows(
        visible=True, seen_before=clock.now(), after=None, limit=100
    )


async def test_a_heartbeat_between_the_read_and_the_batch_claim_keeps_only_that_sandbox(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """The heartbeat is in Redis only (written behind later): the batch's beat-record close
    finds it and leaves that row running; the rest of the batch is reaped, each with its events,
    metrics and logs, nothing charged past the last heartbeat."""
    settings = make_settings(tmp_path, backend, log_level="INFO")
    async with running_app(settings, clock=clock) as app:
        users = [f"user{i}" for i in range(4)]
        ids = [await create_running(app, "site", user=user) for user in users]
        clock.advance(301)
        seen = await idle_now(app, clock)
        assert sorted(r.id for r in seen) == sorted(ids)
        beat = await heartbeat(app, ids[1], user=users[1])  # …then one browser spoke
        assert beat.status_code == 200
        before = stops("idle")
        with captured_logs() as logs:
            reaped = await app.service.reap_many(seen, "idle")
        assert sorted(r.id for r in reaped) == sorted(ids[:1] + ids[2:])
        assert (await status(app, ids[1], user=users[1]))["status"] == "running"
        assert await app.services.quota.slot_holders(users[1]) == [ids[1]]
        assert (await heartbeat(app, ids[1], user=users[1])).status_code == 200  # still open
        for sandbox_id, user in zip(ids, users, strict=True):
            if sandbox_id == ids[1]:
                continue
            gone = await status(app, sandbox_id, user=user)
            assert (gone["status"], gone["reason"]) == ("stopped", "idle")
            assert (await row(app, sandbox_id)).stopped_at == clock.now()
            assert await app.services.quota.slot_holders(user) == []
            assert (await statuses(app, sandbox_id))[-2:] == [
                ("stopping", "idle"),
                ("stopped", "idle"),
            ]
            assert events(logs, "sandbox.deleted", sandbox_id=sandbox_id, reason="idle")
            assert await ledger_total(app, user) == 0  # an idle stop charges nothing
        assert stops("idle") - before == 3
        assert not events(logs, "sandbox.deleted", sandbox_id=ids[1])
        used = beat.json()["usage"]["usedSecondsToday"]
        assert used > 0
        assert await ledger_total(app, users[1]) == used  # charged once, by the flush


async def test_a_heartbeat_written_to_the_row_between_the_read_and_the_claim_keeps_it(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    """The row's own compare-and-set, per row inside the one UPDATE: a heartbeat written to
    Postgres after the read (as without Redis) keeps that row running."""
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        repo = app.services.db.sandboxes
        ids = [await create_running(app, "site", user=f"user{i}") for i in range(3)]
        clock.advance(301)
        seen = await idle_now(app, clock)
        assert len(seen) == 3
        kept = await row(app, ids[2])
        assert await repo.charge(
            kept.id, expected_charged_until=kept.charged_until, charged_until=clock.now(),
            now=clock.now(), visible=True, entries=[],
        )  # fmt: skip
        reaped = await app.service.reap_many(seen, "idle")
        assert sorted(r.id for r in reaped) == sorted(ids[:2])
        assert (await row(app, ids[2])).status == "running"
        assert [(await row(app, i)).status for i in ids[:2]] == ["stopped", "stopped"]


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaytonaEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the SDK's clients trust proxies
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with DaytonaEmulator() as emu:
        yield emu


@pytest.fixture
async def on_daytona(
    tmp_path: Path, backend: Backend, emulator: DaytonaEmulator, clock: ManualClock
) -> AsyncIterator[tuple[Running, DaytonaEmulator]]:
    settings = make_settings(tmp_path, backend, log_level="INFO")
    config = make_config(
        emulator, deployment=settings.preview_deployment, delete_deadline_seconds=0.3
    )
    provider = DaytonaProvider(config)
    try:
        async with running_app(settings, provider=provider, clock=clock) as running:
            yield running, emulator
    finally:
        await provider.aclose()


async def test_deletes_failing_for_some_rows_of_a_batch_leave_exactly_those_stopping(
    on_daytona: tuple[Running, DaytonaEmulator], clock: ManualClock
) -> None:
    """Daytona answers 409 (a state change in progress) to the deletes of two sandboxes of the
    batch: those stay `stopping`, holding their slots, until a later pass finishes them; the
    rest end `stopped` with their slots freed."""
    app, emulator = on_daytona
    users = [f"user{i}" for i in range(4)]
    ids = []
    for i, user in enumerate(users):
        emulator.busy_deletes(1.0 if i % 2 else 0.0, seconds=3)  # users 1 and 3: busy
        ids.append(await create_on_daytona(app, user=user))
        assert (await app.wait_until(ids[-1], "running", user=user))["status"] == "running"
    emulator.clear_faults()
    busy = ids[1::2]
    clock.advance(301)
    before = stops("idle")
    with captured_logs() as logs:
        counts = await app.services.reaper.run_pass()
    assert counts["idle"] == 4  # all four claimed
    for sandbox_id, user in zip(ids, users, strict=True):
        answer = await status(app, sandbox_id, user=user)
        assert answer["reason"] == "idle"
        if sandbox_id in busy:
            assert answer["status"] == "stopping"
            assert await app.services.quota.slot_holders(user) == [sandbox_id]
            assert (await statuses(app, sandbox_id))[-1] == ("stopping", "idle")
            assert events(logs, "sandbox.delete_failed", sandbox_id=sandbox_id)
        else:
            assert answer["status"] == "stopped"
            assert await app.services.quota.slot_holders(user) == []
            assert (await statuses(app, sandbox_id))[-1] == ("stopped", "idle")
    assert stops("idle") - before == 2
    assert {s.labels.get("midori-preview/sandbox-id") for s in emulator.sandboxes.values()} == set(
        busy
    )
    assert len(events(logs, "cleanup.idle")) == 4

    async def finished() -> bool:
        clock.advance(61)  # the stuck-stop retry is due
        await app.services.reaper.run_pass()
        return emulator.sandboxes == {}

    await eventually(finished, within=60, interval=0.2, what="the busy sandboxes deleted")
    for sandbox_id, user in zip(ids, users, strict=True):
        answer = await status(app, sandbox_id, user=user)
        assert (answer["status"], answer["reason"]) == ("stopped", "idle")
        assert await app.services.quota.slot_holders(user) == []
    assert stops("idle") - before == 4
