"""Heartbeats and preview time: "someone is watching" charges the time since the last heartbeat
(see `charging.py`), renews the slot, and stops the sandbox when the day's time is used up."""

from __future__ import annotations

from typing import NoReturn
from zoneinfo import ZoneInfo

from midori_preview.clock import Clock
from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.errors import DailyQuotaExhaustedGone, SandboxStopped
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_charged
from midori_preview.previews.charging import Charger
from midori_preview.previews.schemas import HeartbeatOut, Usage
from midori_preview.previews.states import LIVE, SandboxStatus
from midori_preview.previews.stops import Stops
from midori_preview.previews.views import owned_row
from midori_preview.settings import Settings
from midori_preview.usage import day_of, next_midnight

log = get_logger(__name__)
S = SandboxStatus


class Heartbeats:
    def __init__(
        self,
        *,
        settings: Settings,
        sandboxes: SandboxRepository,
        charger: Charger,
        stops: Stops,
        clock: Clock,
        tz: ZoneInfo,
    ) -> None:
        self.settings = settings
        self.sandboxes = sandboxes
        self.charger = charger
        self.stops = stops
        self.clock = clock
        self.tz = tz

    async def used_today(self, user_id: str) -> int:
        """The user's charged seconds today (USAGE_TIMEZONE)."""
        return await self.charger.used_on(user_id, day_of(self.clock.now(), self.tz))

    async def usage(self, user_id: str, used: int | None = None) -> Usage:
        """The user's preview time today (`used` when the caller already knows it)."""
        now = self.clock.now()
        if used is None:
            used = await self.used_today(user_id)
        cap = self.settings.daily_usage_cap_seconds
        remaining = max(cap - used, 0)
        return Usage(
            used_seconds_today=used,
            remaining_seconds_today=remaining,
            warning="quota_low" if remaining <= self.settings.usage_warning_seconds else None,
            day=day_of(now, self.tz),
            reset_at=next_midnight(now, self.tz),
        )

    async def heartbeat(self, sandbox_id: str, user_id: str, visible: bool) -> HeartbeatOut:
        """Record that someone is watching; charge the time since the last heartbeat.

        The hot path: one row read, one Redis script (slot renewal + the charge reserved against
        the day's cap) and one write (compare-and-set on the row + ledger upsert)."""
        row = await owned_row(self.sandboxes, sandbox_id, user_id)
        now = self.clock.now()
        if row.status not in LIVE:
            self.raise_stopped(row)
        interval = self.settings.heartbeat_interval_seconds
        if row.status != S.RUNNING:
            await self.sandboxes.touch_heartbeat(sandbox_id, now, visible)
            return HeartbeatOut(
                sandbox_id=row.id, status=row.status, next_heartbeat_seconds=interval
            )
        charge = await self.charger.plan(row, now, renew_slot=True)
        changed = (
            charge.seconds > 0
            or charge.charged_until != row.charged_until
            or visible != row.visible
            or row.last_heartbeat_at is None
            or (now - row.last_heartbeat_at).total_seconds() >= 1
        )
        total, exhausted = charge.total_today, charge.exhausted
        if changed:  # a duplicate within the same second writes nothing
            try:
                charged = await self.sandboxes.charge(
                    sandbox_id,
                    expected_charged_until=row.charged_until,
                    charged_until=charge.charged_until,
                    now=now,
                    visible=visible,
                    entries=charge.entries,
                )
            except BaseException:
                await self.charger.refund(row.user_id, charge)
                raise
            record_charged(charge.seconds if charged else 0)
            if not charged:  # a concurrent heartbeat charged this time already
                await self.charger.refund(row.user_id, charge)
                today = day_of(now, self.tz)
                total -= sum(sec for day, sec in charge.reserved if day == today)
                exhausted = total >= self.settings.daily_usage_cap_seconds
        log.debug("heartbeat", sandbox_id=sandbox_id, charged=charge.seconds, visible=visible)
        if exhausted:
            await self.stops.stop(sandbox_id, reason="quota")
            self.raise_stopped(await owned_row(self.sandboxes, sandbox_id, None))
        return HeartbeatOut(
            sandbox_id=row.id,
            status=S.RUNNING,
            next_heartbeat_seconds=interval,
            usage=await self.usage(row.user_id, used=total),
        )

    def raise_stopped(self, row: Sandbox) -> NoReturn:
        """The heartbeat's answer for a sandbox that no longer runs (410)."""
        if row.reason == "quota":
            reset = next_midnight(self.clock.now(), self.tz)
            raise DailyQuotaExhaustedGone(
                "Today's preview time is used up; the preview was stopped.",
                sandboxId=row.id,
                reason=row.reason,
                resetAt=reset.isoformat(),
            )
        raise SandboxStopped(
            "This preview is no longer running.", sandboxId=row.id, reason=row.reason
        )
