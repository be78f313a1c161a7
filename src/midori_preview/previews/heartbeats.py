"""Heartbeats and preview time: "someone is watching" charges the time since the last heartbeat
(see `charging.py`), renews the slot, and stops the sandbox when the day's time is used up."""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from midori_preview.clock import Clock
from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import BeatSegment, SandboxRepository
from midori_preview.errors import DailyQuotaExhaustedGone, SandboxNotFound, SandboxStopped
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_charged
from midori_preview.previews.charging import Charger
from midori_preview.previews.schemas import HeartbeatOut, Usage
from midori_preview.previews.states import LIVE, SandboxStatus
from midori_preview.previews.stops import Stops
from midori_preview.previews.views import owned_row
from midori_preview.quota.beats import Link
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
        charger.flush = self.flush  # a usage mirror rebuilt from the ledger counts the queue
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

        The hot path is one Redis script (`quota.beats`): the charge reserved against the day's
        cap, the slot renewed, the sandbox's beat record advanced and the charge queued for the
        ledger (written behind by `flush`). Postgres is read only for a sandbox's first
        heartbeat (to load its record) and for one that is not running. Without Redis: the
        row's compare-and-set and the ledger in Postgres, as before."""
        now = self.clock.now()
        try:
            res = await self.charger.beat(sandbox_id, user_id, now, visible=visible)
            if res.kind == "miss":
                row = await owned_row(self.sandboxes, sandbox_id, user_id)
                if row.status != S.RUNNING:
                    return await self._not_running(row, now, visible)
                res = await self.charger.beat(sandbox_id, user_id, now, visible=visible, row=row)
        except RedisError:
            log.warning("quota.unreachable_heartbeat_in_postgres", sandbox_id=sandbox_id)
            return await self._heartbeat_in_postgres(sandbox_id, user_id, visible)
        if res.kind == "other":
            raise SandboxNotFound("No such sandbox.", sandboxId=sandbox_id)
        if res.kind != "ok":  # closed: being stopped, or stopped
            row = await owned_row(self.sandboxes, sandbox_id, user_id)
            return await self._not_running(row, now, visible)
        log.debug("heartbeat", sandbox_id=sandbox_id, charged=res.granted, visible=visible)
        if res.total_today >= self.settings.daily_usage_cap_seconds:
            await self.stops.stop(sandbox_id, reason="quota")
            self.raise_stopped(await owned_row(self.sandboxes, sandbox_id, None))
        return HeartbeatOut(
            sandbox_id=sandbox_id,
            status=S.RUNNING,
            next_heartbeat_seconds=self.settings.heartbeat_interval_seconds,
            usage=await self.usage(user_id, used=res.total_today),
        )

    async def _not_running(self, row: Sandbox, now: datetime, visible: bool) -> HeartbeatOut:
        """A heartbeat for a row whose beat record is closed or was never opened: a build
        (remembered on the row), a stop in progress (nothing charged), or a 410."""
        if row.status not in LIVE:
            self.raise_stopped(row)
        interval = self.settings.heartbeat_interval_seconds
        if row.status != S.RUNNING:
            await self.sandboxes.touch_heartbeat(row.id, now, visible)
            return HeartbeatOut(
                sandbox_id=row.id, status=row.status, next_heartbeat_seconds=interval
            )
        return HeartbeatOut(
            sandbox_id=row.id,
            status=S.RUNNING,
            next_heartbeat_seconds=interval,
            usage=await self.usage(row.user_id),
        )

    async def flush(self) -> dict[str, int]:
        """Write the heartbeats queued in Redis behind to Postgres (a scheduler job, and the
        reaper before each pass). Every batch still in Redis is applied, oldest first, also one
        a dead replica claimed; each segment is a compare-and-set on the row's charged time, so
        a batch applied twice charges once. Nothing to do without Redis."""
        counts = {"batches": 0, "links": 0, "skipped": 0}
        beats = self.charger.beats
        try:
            batches = await beats.claim_batches()
            for batch in batches:
                links = await beats.links(batch)
                segments = segments_of(links)
                skipped = await self.sandboxes.apply_beats(segments, self.clock.now())
                await beats.ack(batch)
                record_charged(
                    sum(
                        e[3]
                        for seg in segments
                        if seg.sandbox_id not in skipped
                        for e in seg.entries
                    )
                )
                counts["batches"] += 1
                counts["links"] += len(links)
                counts["skipped"] += len(skipped)
                if skipped:
                    log.warning("heartbeats.segments_skipped", sandbox_ids=sorted(skipped))
        except RedisError:
            log.warning("quota.unreachable_flush_postponed")
        return counts

    async def _heartbeat_in_postgres(
        self, sandbox_id: str, user_id: str, visible: bool
    ) -> HeartbeatOut:
        """Redis is unreachable: charge through the row's compare-and-set in Postgres."""
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


def segments_of(links: list[Link]) -> list[BeatSegment]:
    """Links in order → one segment per run of consecutive links of a sandbox (each continuing
    from the charged time the one before it reached)."""
    open_: dict[str, BeatSegment] = {}
    done: list[BeatSegment] = []
    for link in links:
        entries = [(link.user_id, link.project_id, day, sec) for day, sec in link.days if sec]
        seg = open_.get(link.sandbox_id)
        if seg is not None and seg.until == link.after:
            open_[link.sandbox_id] = BeatSegment(
                seg.sandbox_id, seg.after, link.until, link.at, link.visible,
                seg.entries + entries,
            )  # fmt: skip
            continue
        if seg is not None:
            done.append(seg)
        open_[link.sandbox_id] = BeatSegment(
            link.sandbox_id, link.after, link.until, link.at, link.visible, entries
        )
    return done + list(open_.values())
