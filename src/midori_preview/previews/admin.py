"""Admin side: cleanup stats and actions, usage reports, the sandbox table."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.usage import UsageRepository
from midori_preview.errors import ValidationFailed
from midori_preview.previews.reaper import REAPER_JOB, Reaper
from midori_preview.previews.states import BUILDING, SandboxStatus
from midori_preview.usage import day_of

S = SandboxStatus

# Bounds that keep day arithmetic and timezone conversion far from date.min/date.max.
REPORT_FIRST_DAY = date(2000, 1, 1)
REPORT_LAST_DAY = date(9000, 12, 31)


class AdminService:
    def __init__(
        self,
        *,
        sandboxes: SandboxRepository,
        usage: UsageRepository,
        reaper: Reaper,
        scheduler: Any | None,
        tz: ZoneInfo,
    ) -> None:
        self.sandbox_rows = sandboxes
        self.usage = usage
        self.reaper = reaper
        self.scheduler = scheduler  # APScheduler, or None when REAPER_ENABLED=false
        self.tz = tz  # USAGE_TIMEZONE: where a report's days start

    def _next_run(self) -> datetime | None:
        if self.scheduler is None:
            return None
        job = self.scheduler.get_job(REAPER_JOB)
        return job.next_run_time if job is not None else None

    async def stats(self) -> dict[str, Any]:
        """Sandbox counts in the active view and the reaper's state."""
        counts = await self.sandbox_rows.status_counts()
        state = await self.reaper.last_run()
        paused = bool(state.get("paused", False))
        next_run = self._next_run()
        return {
            "total": sum(counts.values()),
            S.RUNNING: counts.get(S.RUNNING, 0),
            S.STOPPED: counts.get(S.STOPPED, 0),
            S.STOPPING: counts.get(S.STOPPING, 0),
            S.CREATING: sum(counts.get(s, 0) for s in BUILDING),  # every building state
            S.ERROR: counts.get(S.ERROR, 0),
            "isServiceRunning": self.scheduler is not None and not paused,
            "paused": paused,
            "lastRunAt": state.get("lastRunAt"),
            "nextRunAt": next_run.isoformat() if next_run and not paused else None,
            "lastRun": state.get("lastRun", {}),
            "lastSyncAt": state.get("lastSyncAt"),
            "lastSync": state.get("lastSync", {}),
        }

    async def act(self, action: str) -> dict[str, Any]:
        """Run an admin action (start, stop, cleanup, sync, memory): what it did."""
        if action == "start":
            await self.reaper.set_paused(False)
            return {"paused": False}
        if action == "stop":
            await self.reaper.set_paused(True)
            return {"paused": True}
        if action == "cleanup":
            return await self.reaper.run_pass()
        if action == "sync":
            return await self.reaper.sync()
        if action == "memory":
            return await self.reaper.prune_memory()
        raise ValidationFailed(f"unknown action {action!r}")

    async def sandboxes(self) -> list[dict[str, Any]]:
        """The sandboxes in the active view, newest first (heartbeats queued in Redis written
        first, so the last heartbeat and the tab's visibility are current)."""
        await self.reaper.service.flush_heartbeats()
        return [
            {
                "sandboxId": r.id,
                "userId": r.user_id,
                "projectId": r.project_id,
                "kind": r.kind,
                "status": r.status,
                "reason": r.reason,
                "createdAt": r.created_at.isoformat(),
                "readyAt": r.ready_at.isoformat() if r.ready_at else None,
                "lastHeartbeatAt": r.last_heartbeat_at.isoformat() if r.last_heartbeat_at else None,
                "visible": r.visible,
            }
            for r in await self.sandbox_rows.active_rows()
        ]

    async def usage_report(
        self, day_from: date, day_to: date, group_by: Literal["user", "project"]
    ) -> dict[str, Any]:
        """Preview seconds, sandboxes created, stops by reason and commands run, per day."""
        tz = self.tz
        if day_to < day_from or (day_to - day_from).days > 366:
            raise ValidationFailed("`from` must be before `to`, at most a year apart")
        if day_from < REPORT_FIRST_DAY or day_to > REPORT_LAST_DAY:
            raise ValidationFailed(
                f"dates must lie between {REPORT_FIRST_DAY} and {REPORT_LAST_DAY}"
            )
        rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
            lambda: {"previewSeconds": 0, "sandboxesCreated": 0, "stoppedByReason": Counter(),
                     "commandsRun": 0}
        )  # fmt: skip
        await self.reaper.service.flush_heartbeats()  # the ledger counts every heartbeat
        for day, key, seconds in await self.usage.report(
            day_from.isoformat(), day_to.isoformat(), group_by
        ):
            rows[(day, key)]["previewSeconds"] += int(seconds)
        start = datetime.combine(day_from, datetime.min.time(), tzinfo=tz)
        end = datetime.combine(day_to + timedelta(days=1), datetime.min.time(), tzinfo=tz)
        for sb in await self.sandbox_rows.rows_between(start, end):
            key = sb.user_id if group_by == "user" else sb.project_id
            if start <= sb.created_at < end:
                entry = rows[(day_of(sb.created_at, tz), key)]
                entry["sandboxesCreated"] += 1
                entry["commandsRun"] += sb.commands_run
            if sb.stopped_at is not None and start <= sb.stopped_at < end:
                entry = rows[(day_of(sb.stopped_at, tz), key)]
                entry["stoppedByReason"][sb.reason or "unknown"] += 1
        out = [
            {"day": day, "key": key, **{**v, "stoppedByReason": dict(v["stoppedByReason"])}}
            for (day, key), v in sorted(rows.items())
        ]
        totals = {
            "previewSeconds": sum(r["previewSeconds"] for r in out),
            "sandboxesCreated": sum(r["sandboxesCreated"] for r in out),
            "commandsRun": sum(r["commandsRun"] for r in out),
        }
        return {
            "from": day_from.isoformat(),
            "to": day_to.isoformat(),
            "groupBy": group_by,
            "rows": out,
            "totals": totals,
        }
