"""What a heartbeat owes (`Charger.plan`), on the in-process Redis-compatible store and a migrated
SQLite ledger: whole seconds since `charged_until` with the fraction carried over, at most one
interval + grace, nothing behind a hidden tab, split at local midnight, clipped at the day's cap;
the slot renewed in the same call; a lost mirror rebuilt from the ledger, the ledger alone when
Redis is unreachable; a refund gives a reservation back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from midori_preview.db.database import Database
from midori_preview.db.engine import make_engine, upgrade_head
from midori_preview.db.models import Sandbox, UsageLedger
from midori_preview.db.usage import UsageRepository
from midori_preview.kv import make_redis
from midori_preview.previews.charging import Charge, Charger
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from tests.support.servers import free_port

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TODAY = "2026-01-01"
INTERVAL, GRACE, CAP = 120, 30, 3600
MOST = INTERVAL + GRACE


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('charging')}/ledger.db"
    upgrade_head(url)
    yield url


@dataclass
class Billing:
    charger: Charger
    quota: QuotaService
    database: Database

    async def ledger_has(self, user: str, day: str, seconds: int) -> None:
        async with self.database.writes() as s:
            s.add(
                UsageLedger(user_id=user, day=day, project_id="p", seconds=seconds, updated_at=NOW)
            )
            await s.commit()


@pytest.fixture
async def billing(ledger_url: str, tmp_path: Path) -> AsyncIterator[Billing]:
    async with billing_on(ledger_url, tmp_path) as b:
        yield b


@asynccontextmanager
async def billing_on(
    ledger_url: str, tmp_path: Path, *, tz: str = "UTC", redis_url: str | None = None
) -> AsyncIterator[Billing]:
    """A Charger on its own in-process store (or `redis_url`) and the shared SQLite ledger."""
    engine = make_engine(ledger_url)
    redis = make_redis(redis_url)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        heartbeat_interval_seconds=INTERVAL,
        heartbeat_grace_seconds=GRACE,
        daily_usage_cap_seconds=CAP,
    )
    quota = QuotaService(redis, prefix="mp:charging")
    database = Database(engine)
    charger = Charger(
        settings=settings,
        usage=UsageRepository(database),
        quota=quota,
        tz=ZoneInfo(tz),
        slot_lease_seconds=600,
    )
    try:
        yield Billing(charger, quota, database)
    finally:
        await redis.aclose()
        await engine.dispose()


_ids = iter(range(10**6))


def row(
    *,
    charged_until: datetime | None = None,
    ready_at: datetime | None = None,
    visible: bool = True,
) -> Sandbox:
    """A sandbox row of a user of its own (tests share the ledger, never a user)."""
    n = next(_ids)
    return Sandbox(
        id=f"sb{n}",
        user_id=f"user{n}",
        project_id="p",
        visible=visible,
        charged_until=charged_until,
        ready_at=ready_at,
    )


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


async def test_whole_seconds_since_charged_until_and_the_fraction_carries_over(
    billing: Billing,
) -> None:
    sandbox = row(charged_until=ago(10.7))
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert charge == Charge(
        seconds=10,
        charged_until=ago(0.7),  # the 0.7 s is owed by the next charge
        entries=[(sandbox.user_id, "p", TODAY, 10)],
        exhausted=False,
        total_today=10,
        reserved=[(TODAY, 10)],
    )
    later = await billing.charger.plan(sandbox_at(sandbox, ago(0.7)), ago(-0.5), renew_slot=False)
    assert (later.seconds, later.total_today) == (1, 11), "0.7 + 0.5 s make one whole second"


def sandbox_at(sandbox: Sandbox, charged_until: datetime) -> Sandbox:
    sandbox.charged_until = charged_until
    return sandbox


async def test_under_a_second_charges_nothing_and_keeps_charged_until(billing: Billing) -> None:
    charge = await billing.charger.plan(row(charged_until=ago(0.9)), NOW, renew_slot=False)
    assert (charge.seconds, charge.entries, charge.reserved) == (0, [], [])
    assert charge.charged_until == ago(0.9)
    assert (charge.total_today, charge.exhausted) == (0, False)


async def test_the_first_charge_counts_from_ready_at(billing: Billing) -> None:
    charge = await billing.charger.plan(row(ready_at=ago(30)), NOW, renew_slot=False)
    assert (charge.seconds, charge.charged_until) == (30, NOW)
    nothing = await billing.charger.plan(row(), NOW, renew_slot=False)  # never ran: nothing owed
    assert (nothing.seconds, nothing.charged_until) == (0, NOW)


@pytest.mark.parametrize("gap", [MOST, MOST + 1, MOST + 0.5, 10_000])
async def test_a_gap_of_interval_plus_grace_or_more_charges_exactly_that(
    billing: Billing, gap: float
) -> None:
    sandbox = row(charged_until=ago(gap))
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert (charge.seconds, charge.charged_until) == (MOST, NOW)
    assert charge.entries == [(sandbox.user_id, "p", TODAY, MOST)]


async def test_just_under_the_most_is_charged_as_it_is(billing: Billing) -> None:
    charge = await billing.charger.plan(row(charged_until=ago(MOST - 0.5)), NOW, renew_slot=False)
    assert (charge.seconds, charge.charged_until) == (MOST - 1, ago(0.5))


async def test_nothing_is_charged_behind_a_hidden_tab_but_the_slot_is_renewed(
    billing: Billing,
) -> None:
    sandbox = row(charged_until=ago(100), visible=False)
    await billing.quota.raise_usage(sandbox.user_id, TODAY, 500)
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=True)
    assert (charge.seconds, charge.entries, charge.reserved) == (0, [], [])
    assert charge.charged_until == NOW, "the hidden time is skipped, not owed later"
    assert charge.total_today == 500
    assert await billing.quota.slot_holders(sandbox.user_id) == [sandbox.id]


async def test_the_slot_is_renewed_only_when_asked(billing: Billing) -> None:
    sandbox = row(charged_until=ago(5))
    await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert await billing.quota.slot_holders(sandbox.user_id) == []
    await billing.charger.plan(sandbox, NOW, renew_slot=True)
    assert await billing.quota.slot_holders(sandbox.user_id) == [sandbox.id]


async def test_a_charge_across_local_midnight_is_split_between_the_days(
    ledger_url: str, tmp_path: Path
) -> None:
    # 17:00:20 UTC is 00:00:20 on 2 January in Bangkok (UTC+7): 30 s fall on the 1st, 20 on the 2nd.
    now = datetime(2026, 1, 1, 17, 0, 20, tzinfo=UTC)
    async with billing_on(ledger_url, tmp_path, tz="Asia/Bangkok") as bill:
        sandbox = row(charged_until=now - timedelta(seconds=50))
        charge = await bill.charger.plan(sandbox, now, renew_slot=True)
        assert charge.entries == [
            (sandbox.user_id, "p", "2026-01-01", 30),
            (sandbox.user_id, "p", "2026-01-02", 20),
        ]
        assert (charge.seconds, charge.charged_until, charge.total_today) == (50, now, 20)
        assert charge.reserved == [("2026-01-01", 30), ("2026-01-02", 20)]
        assert await bill.quota.slot_holders(sandbox.user_id) == [sandbox.id]

        # A long gap is cut to interval + grace first, then split: 130 s before midnight.
        long_gap = row(charged_until=now - timedelta(hours=2))
        cut = await bill.charger.plan(long_gap, now, renew_slot=False)
        assert [e[2:] for e in cut.entries] == [("2026-01-01", MOST - 20), ("2026-01-02", 20)]


async def test_the_cap_clips_the_charge_and_the_rest_is_not_owed(billing: Billing) -> None:
    sandbox = row(charged_until=ago(60.5))
    await billing.quota.raise_usage(sandbox.user_id, TODAY, CAP - 10)
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert (charge.seconds, charge.total_today, charge.exhausted) == (10, CAP, True)
    assert charge.charged_until == NOW, "the clipped 50.5 s are never charged later"
    again = await billing.charger.plan(sandbox_at(sandbox, NOW), ago(-60), renew_slot=False)
    assert (again.seconds, again.entries, again.exhausted) == (0, [], True)


async def test_a_lost_mirror_is_rebuilt_from_the_ledger_before_reserving(billing: Billing) -> None:
    sandbox = row(charged_until=ago(60))
    await billing.ledger_has(sandbox.user_id, TODAY, 1000)
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert (charge.seconds, charge.total_today, charge.reserved) == (60, 1060, [(TODAY, 60)])
    assert await billing.charger.used_on(sandbox.user_id, TODAY) == 1060


async def test_a_refund_gives_the_reservation_back(billing: Billing) -> None:
    sandbox = row(charged_until=ago(40))
    charge = await billing.charger.plan(sandbox, NOW, renew_slot=False)
    assert await billing.charger.used_on(sandbox.user_id, TODAY) == 40
    await billing.charger.refund(sandbox.user_id, charge)
    assert await billing.charger.used_on(sandbox.user_id, TODAY) == 0


async def test_without_redis_the_ledger_alone_decides(ledger_url: str, tmp_path: Path) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    async with billing_on(ledger_url, tmp_path, redis_url=unreachable) as bill:
        sandbox = row(charged_until=ago(60))
        await bill.ledger_has(sandbox.user_id, TODAY, CAP - 20)
        charge = await bill.charger.plan(sandbox, NOW, renew_slot=True)
        assert (charge.seconds, charge.total_today, charge.exhausted) == (20, CAP, True)
        assert charge.reserved == [], "nothing to refund: nothing was reserved in Redis"
        assert await bill.charger.used_on(sandbox.user_id, TODAY) == CAP - 20  # not committed
