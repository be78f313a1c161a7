"""The background loops are scheduler jobs: the reaper's tick with REAPER_ENABLED and the
heartbeats' write-behind flush (HEARTBEAT_FLUSH_INTERVAL_SECONDS), and GitHub's reconcile beside
them once the webhook is configured (every 2 reaper intervals, at least 10 s)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from midori_preview.scheduler import FLUSH_JOB, GITHUB_RECONCILE_JOB
from tests.conftest import Backend, make_settings, running_app

EMBEDDED = Backend("embedded", None, None)


def periods(scheduler: Any) -> dict[str, float]:
    jobs = {job.id: job.trigger for job in scheduler.get_jobs()}
    assert all(isinstance(t, IntervalTrigger) for t in jobs.values())
    return {name: t.interval.total_seconds() for name, t in jobs.items()}


async def test_no_scheduler_without_the_reaper(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EMBEDDED, github_webhook_secret="s3cret")
    async with running_app(settings) as app:
        assert app.services.scheduler is None


async def test_the_reaper_alone_until_the_webhook_is_configured(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, EMBEDDED, reaper_enabled=True, reaper_interval_seconds=7)
    async with running_app(settings) as app:
        assert periods(app.services.scheduler) == {"reaper": 7, FLUSH_JOB: 2}


async def test_github_reconcile_runs_beside_the_reaper(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, EMBEDDED, reaper_enabled=True, reaper_interval_seconds=30,
        github_webhook_secret="s3cret",
    )  # fmt: skip
    async with running_app(settings) as app:
        assert periods(app.services.scheduler) == {
            "reaper": 30,
            FLUSH_JOB: 2,
            GITHUB_RECONCILE_JOB: 60,
        }
    short = make_settings(
        tmp_path / "short", EMBEDDED, reaper_enabled=True, reaper_interval_seconds=2,
        github_webhook_secret="s3cret",
    )  # fmt: skip
    async with running_app(short) as app:
        assert periods(app.services.scheduler)[GITHUB_RECONCILE_JOB] == 10
