"""The in-process scheduler (APScheduler): every background loop of the service is a job here —
the reaper's tick, the heartbeats' write-behind flush and, with webhooks on, GitHub's reconcile.
Every replica runs it; the jobs are safe with several replicas (locks and compare-and-set inside
them)."""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from midori_preview.github.service import GitHubService
from midori_preview.logging import get_logger
from midori_preview.previews.reaper import REAPER_JOB, Reaper
from midori_preview.settings import Settings

log = get_logger(__name__)

GITHUB_RECONCILE_JOB = "github-reconcile"
FLUSH_JOB = "heartbeat-flush"  # the heartbeats written behind (previews/heartbeats.py)


def github_reconcile_seconds(settings: Settings) -> float | None:
    """How often GitHub's reconcile runs: beside the reaper, once webhooks or the Actions trigger
    are on (else never)."""
    github_on = settings.github_webhook_secret is not None or settings.github_actions_token
    if not settings.reaper_enabled or not github_on:
        return None
    return max(settings.reaper_interval_seconds * 2, 10)


def build_scheduler(
    settings: Settings, *, reaper: Reaper, github: GitHubService
) -> AsyncIOScheduler | None:
    """The scheduler with its jobs (not started), or None when REAPER_ENABLED is false."""
    if not settings.reaper_enabled:
        return None
    every = settings.reaper_interval_seconds
    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(
        reaper.tick,
        "interval",
        seconds=every,
        id=REAPER_JOB,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=every,
    )
    flush_every = settings.heartbeat_flush_interval_seconds
    scheduler.add_job(
        reaper.flush_heartbeats,
        "interval",
        seconds=flush_every,
        id=FLUSH_JOB,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(int(flush_every), 1),
    )
    reconcile_every = github_reconcile_seconds(settings)
    if reconcile_every is not None:

        async def reconcile() -> None:
            try:
                await github.reconcile()
            except Exception:
                log.exception("github.reconcile_failed")

        scheduler.add_job(
            reconcile,
            "interval",
            seconds=reconcile_every,
            id=GITHUB_RECONCILE_JOB,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=reconcile_every,
        )
    return scheduler
