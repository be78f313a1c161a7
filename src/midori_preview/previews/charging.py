"""Charging preview time: what a heartbeat (or a user's stop) adds to the usage ledger.

The seconds since the row's `charged_until`, at most one heartbeat interval + grace (a lost
browser is not billed for the gap), nothing for a gap after a hidden-tab heartbeat (nobody was
watching), split at local midnight, and reserved against the day's cap in Redis in one atomic
script — so two sandboxes of one user charging at once cannot both spend the same remainder.
The row's compare-and-set on `charged_until` then commits the charge in Postgres (the truth);
a reservation whose charge did not commit is refunded."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from midori_preview.db.models import Sandbox
from midori_preview.db.usage import LedgerEntry, UsageRepository
from midori_preview.logging import get_logger
from midori_preview.quota.beats import BeatResult, BeatStore, Terms
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from midori_preview.usage import day_of, split_by_day

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Charge:
    seconds: int
    charged_until: datetime
    entries: list[LedgerEntry]  # what the ledger is charged
    exhausted: bool  # today's cap is reached
    total_today: int  # the user's usage today including this charge
    reserved: list[tuple[str, int]] = field(default_factory=list)  # (day, seconds) in Redis


class Charger:
    def __init__(
        self,
        *,
        settings: Settings,
        usage: UsageRepository,
        quota: QuotaService,
        tz: ZoneInfo,
        slot_lease_seconds: int,
    ) -> None:
        self.usage = usage
        self.quota = quota
        self.tz = tz
        self.cap = settings.daily_usage_cap_seconds
        self.most = settings.heartbeat_interval_seconds + settings.heartbeat_grace_seconds
        self.slot_lease_seconds = slot_lease_seconds
        self.beats = BeatStore(quota.redis, prefix=quota.prefix)
        self.flush: Callable[[], Awaitable[Any]] | None = None  # set by `Heartbeats`
        self.terms = Terms(
            most=self.most,
            cap=self.cap,
            usage_ttl=quota.usage_ttl,
            lease_seconds=slot_lease_seconds,
            record_ttl=settings.max_sandbox_ttl_seconds + 86400,
        )

    async def ledger(self, user_id: str, day: str) -> int:
        """The user's total on `day` in the ledger, once the heartbeats queued in Redis are
        written behind (a mirror rebuilt from it must count them)."""
        if self.flush is not None:
            await self.flush()
        return await self.usage.used_seconds(user_id, day)

    async def used_on(self, user_id: str, day: str) -> int:
        """The user's usage on `day`: the Redis mirror, rebuilt from Postgres when lost; Postgres
        alone when Redis is unreachable."""
        try:
            return await self.quota.used_seconds(user_id, day, lambda: self.ledger(user_id, day))
        except RedisError:
            return await self.usage.used_seconds(user_id, day)

    async def plan(self, row: Sandbox, now: datetime, *, renew_slot: bool) -> Charge:
        """Reserve what `row` owes up to `now` (and renew its slot in the same Redis call)."""
        start = row.charged_until or row.ready_at or now
        gap = (now - start).total_seconds()
        seconds, begin, until = 0, now, start
        if not row.visible:  # the last heartbeat reported a hidden tab: nobody watched since
            until = now
        elif gap >= self.most:
            seconds, begin, until = self.most, now - timedelta(seconds=self.most), now
        elif gap >= 1:  # whole seconds; the fraction carries over to the next charge
            seconds, begin = int(gap), start
            until = start + timedelta(seconds=seconds)
        today = day_of(now, self.tz)
        parts = split_by_day(begin, seconds, self.tz) if seconds else []
        if today not in (day for day, _ in parts):
            parts.append((today, 0))  # still renews the slot and reads today's total
        renew = (row.user_id, row.id, self.slot_lease_seconds) if renew_slot else None
        entries: list[LedgerEntry] = []
        reserved: list[tuple[str, int]] = []
        total_today = 0
        for day, part in parts:
            granted, total, in_redis = await self._reserve(
                row.user_id, day, part, renew if day == today else None
            )
            if granted < part:  # clipped at the cap: the rest is not owed
                until = now
            if granted:
                entries.append((row.user_id, row.project_id, day, granted))
                if in_redis:
                    reserved.append((day, granted))
            if day == today:
                total_today = total
        return Charge(
            seconds=sum(e[3] for e in entries),
            charged_until=until,
            entries=entries,
            exhausted=total_today >= self.cap,
            total_today=total_today,
            reserved=reserved,
        )

    async def _reserve(
        self, user_id: str, day: str, seconds: int, renew: tuple[str, str, int] | None
    ) -> tuple[int, int, bool]:
        """(granted, day total after, reserved in Redis)."""
        try:
            res = await self.quota.reserve_usage(user_id, day, seconds, cap=self.cap, renew=renew)
            if res is None:  # Redis lost the mirror: rebuild it from the ledger, then reserve
                await self.quota.raise_usage(
                    user_id, day, await self.usage.used_seconds(user_id, day)
                )
                res = await self.quota.reserve_usage(
                    user_id, day, seconds, cap=self.cap, renew=renew
                )
            if res is not None:
                return res[0], res[1], True
        except RedisError:
            log.warning("quota.unreachable_charging_from_postgres", user_id=user_id)
        used = await self.usage.used_seconds(user_id, day)
        granted = max(min(seconds, self.cap - used), 0)
        return granted, used + granted, False

    async def beat(
        self,
        sandbox_id: str,
        user_id: str,
        now: datetime,
        *,
        visible: bool | None,
        final: bool = False,
        renew: bool = True,
        row: Sandbox | None = None,
    ) -> BeatResult:
        """The heartbeat's one Redis script (`quota.beats`): what `plan` computes, reserved,
        recorded and queued for the ledger atomically. `row` loads a missing record. A lost
        usage mirror is rebuilt from the ledger first. Raises RedisError when Redis is gone."""
        local = now.astimezone(self.tz)
        midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=self.tz)
        today, yesterday = day_of(now, self.tz), day_of(midnight - timedelta(seconds=1), self.tz)
        load = None
        if row is not None:
            start = row.charged_until or row.ready_at or now
            load = (row.user_id, row.project_id, start, row.charged_until, row.visible)
        keys = (
            self.quota.usage_key(user_id, today),
            self.quota.usage_key(user_id, yesterday),
            self.quota.slots_key(user_id),
        )
        for _ in range(3):
            res = await self.beats.beat(
                sandbox_id, now, terms=self.terms, keys=keys, days=(today, yesterday, midnight),
                visible=visible, owner=user_id, final=final, renew=renew, load=load,
            )  # fmt: skip
            if res.kind != "nomirror":
                return res
            await self.quota.raise_usage(user_id, res.day, await self.ledger(user_id, res.day))
        raise RedisError("the usage mirror keeps vanishing")

    async def refund(self, user_id: str, charge: Charge) -> None:
        """Give back what `charge` reserved: its compare-and-set lost (a duplicate heartbeat)."""
        for day, seconds in charge.reserved:
            with contextlib.suppress(RedisError):
                await self.quota.refund_usage(user_id, day, seconds)
