"""Heartbeats are one Redis script; the usage ledger and the rows' heartbeat columns are written
behind in batches — and stay exact: a batch claimed by a replica that died before applying it is
applied by another, a batch applied by a replica that died before forgetting it is not charged
again, a heartbeat whose replica died right after answering is not lost, and the hot path makes
no Postgres round trip once the sandbox's beat record is loaded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event

from midori_preview.previews.heartbeats import segments_of
from tests.conftest import Backend, Running, make_settings, running_app
from tests.quota.helpers import create_running, heartbeat, ledger_total, mirror, replicas, stop
from tests.support.clock import ManualClock

DAY = "2026-01-01"


@contextmanager
def statements(app: Running) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block."""
    seen: list[str] = []

    def record(*args: Any) -> None:
        seen.append(str(args[2]))

    engine = app.services.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_the_heartbeat_hot_path_makes_no_postgres_round_trip(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        sandbox_id = await create_running(app, "site")
        clock.advance(60)
        assert (await heartbeat(app, sandbox_id)).status_code == 200  # loads the beat record
        with statements(app) as sql:
            for _ in range(5):
                clock.advance(60)
                res = await heartbeat(app, sandbox_id)
                assert res.status_code == 200, res.text
        assert sql == []
        assert res.json()["usage"]["usedSecondsToday"] == 360
        assert await ledger_total(app) == 360  # written behind, exactly
        row = await app.services.db.sandboxes.get(sandbox_id)
        assert row is not None and row.last_heartbeat_at == clock.now()


async def test_a_batch_claimed_by_a_replica_that_died_is_applied_by_another(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with replicas(make_settings(tmp_path, pg_backend), clock) as (a, b):
        sandbox_id = await create_running(a, "site")
        clock.advance(120)
        assert (await heartbeat(a, sandbox_id)).status_code == 200
        beats = a.service.heartbeats.charger.beats
        assert await beats.claim_batches()  # replica a took the batch aside… and died
        clock.advance(60)
        assert (await heartbeat(b, sandbox_id)).status_code == 200  # a later batch
        counts = await b.service.flush_heartbeats()
        assert (counts["batches"], counts["links"], counts["skipped"]) == (2, 2, 0)
        assert await ledger_total(b) == 180
        assert await beats.pending() == 0


async def test_a_batch_applied_by_a_replica_that_died_before_forgetting_it_charges_once(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with replicas(make_settings(tmp_path, pg_backend), clock) as (a, b):
        sandbox_id = await create_running(a, "site")
        for _ in range(3):
            clock.advance(100)
            assert (await heartbeat(a, sandbox_id)).status_code == 200
        beats = a.service.heartbeats.charger.beats
        (batch,) = await beats.claim_batches()
        links = await beats.links(batch)
        repo = a.services.db.sandboxes
        assert await repo.apply_beats(segments_of(links), clock.now()) == set()
        # …replica a committed, then died before its ack: the batch is still in Redis.
        assert await beats.pending() == 3
        counts = await b.service.flush_heartbeats()
        assert (counts["links"], counts["skipped"]) == (3, 1)  # the replay: nothing charged
        assert await ledger_total(b) == 300
        assert await mirror(b, "alice", DAY) == 300
        assert await beats.pending() == 0

        clock.advance(100)  # and the chain goes on from there
        assert (await heartbeat(b, sandbox_id)).status_code == 200
        assert await ledger_total(b) == 400


async def test_heartbeats_answered_by_a_replica_that_died_are_not_lost(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with replicas(make_settings(tmp_path, pg_backend), clock) as (survivor, doomed):
        sandbox_id = await create_running(survivor, "site")
        clock.advance(120)
        assert (await heartbeat(doomed, sandbox_id)).status_code == 200
        clock.advance(120)
        assert (await heartbeat(doomed, sandbox_id)).status_code == 200
        # the replica that answered never flushes again (dead): what it answered is in Redis
        assert await ledger_total(survivor) == 240
        clock.advance(30)
        assert (await stop(survivor, sandbox_id)).status_code == 200  # a user's stop: to it
        assert await ledger_total(survivor) == 270
        row = await survivor.services.db.sandboxes.get(sandbox_id)
        assert row is not None and row.charged_until == clock.now()


async def test_concurrent_flushes_of_two_replicas_charge_each_heartbeat_once(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with replicas(make_settings(tmp_path, pg_backend), clock) as (a, b):
        ids = [await create_running(a, "site", user=f"u{i}") for i in range(5)]
        for _ in range(4):
            clock.advance(90)
            for i, sandbox_id in enumerate(ids):
                assert (await heartbeat(b, sandbox_id, user=f"u{i}")).status_code == 200
            await asyncio.gather(a.service.flush_heartbeats(), b.service.flush_heartbeats())
        for i in range(5):
            assert await ledger_total(a, f"u{i}") == 360
