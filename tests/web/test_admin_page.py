"""The admin page in headless Chromium: the live sandbox table, the reaper's state and actions
(a cleanup pass reaps what went idle), and charts of preview time per user and per project."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from playwright.async_api import Browser, expect

from tests.conftest import Backend
from tests.web.conftest import ADMIN, API, CAFE_JSON, live_server, shot, watch

IDLE = 3  # IDLE_TIMEOUT_SECONDS: no heartbeat this long → the next cleanup pass stops it


async def test_admin_page_lists_sandboxes_charts_usage_and_cleans_up(
    tmp_path: Path, backend: Backend, browser: Browser
) -> None:
    async with live_server(
        tmp_path,
        backend,
        reaper_enabled=True,
        reaper_interval_seconds=3600,  # scheduled, but only the button runs a pass here
        idle_timeout_seconds=IDLE,
    ) as live:
        # The page is served to anyone; its data is for admins only.
        assert (await live.client.get("/admin")).status_code == 200
        denied = await live.client.get(f"{API}/admin/sandboxes", headers={"X-User-Id": "eve"})
        assert (denied.status_code, denied.json()["error"]["code"]) == (403, "forbidden")

        cafe = json.loads(CAFE_JSON.read_text(encoding="utf-8"))
        ids: dict[str, str] = {}
        for user, body in (
            ("alice", {"projectId": "demo-cafe", "promptJson": cafe, "template": "static"}),
            ("bob", {"projectId": "bob-site", "files": [{"path": "index.html", "content": "hi"}]}),
        ):
            res = await live.client.post(f"{API}/daytona", json=body, headers={"X-User-Id": user})
            assert res.status_code == 202, res.text
            ids[user] = res.json()["sandboxId"]
        for user, sandbox_id in ids.items():
            await live.wait_status(sandbox_id, user, "running")
        await asyncio.sleep(1.2)
        for user, sandbox_id in ids.items():  # a heartbeat charges the time since `running`
            res = await live.client.post(
                f"{API}/daytona/heartbeat",
                json={"sandboxId": sandbox_id},
                headers={"X-User-Id": user},
            )
            assert res.status_code == 200, res.text
        beat_at = time.monotonic()

        page = await (
            await browser.new_context(viewport={"width": 1280, "height": 1200})
        ).new_page()
        problems = watch(page)
        await page.goto(f"{live.url}/admin")
        await expect(page.locator("#user-id")).to_have_value("admin")

        # The live table: one row per sandbox, with who, what, state, age and last heartbeat.
        alice = page.locator(f"#sandboxes tr[data-sandbox-id='{ids['alice']}']")
        await expect(alice.locator("td")).to_contain_text(
            [ids["alice"], "alice", "demo-cafe", "running"]
        )
        await expect(alice.locator("td").nth(5)).to_contain_text("ago")
        bob = page.locator(f"#sandboxes tr[data-sandbox-id='{ids['bob']}']")
        await expect(bob.locator("td.status")).to_have_text("running")

        # The reaper: scheduled, with its next run.
        state = page.locator("#reaper-state")
        await expect(state.locator("div").filter(has_text="Reaper").locator("dd")).to_have_text(
            "running"
        )
        await expect(
            state.locator("div").filter(has_text="Next run").locator("dd")
        ).not_to_have_text("—")
        await expect(
            page.locator("#counts div").filter(has_text="Running").locator("dd")
        ).to_have_text("2")

        # Charts: preview seconds per day, one series per user and per project.
        user_bars = page.locator("#chart-user svg rect.bar")
        await expect(user_bars).to_have_count(2)
        assert sorted(await user_bars.evaluate_all("bs => bs.map(b => b.dataset.key)")) == [
            "alice",
            "bob",
        ]
        seconds = await user_bars.evaluate_all("bs => bs.map(b => Number(b.dataset.seconds))")
        assert all(s >= 1 for s in seconds)
        project_bars = page.locator("#chart-project svg rect.bar")
        assert sorted(await project_bars.evaluate_all("bs => bs.map(b => b.dataset.key)")) == [
            "bob-site",
            "demo-cafe",
        ]
        await expect(page.locator("#chart-user .legend")).to_contain_text("alice")
        await shot(page, "admin-1-running")

        # Nobody watches any more: a cleanup pass stops both as idle.
        await asyncio.sleep(max(0.0, IDLE + 0.3 - (time.monotonic() - beat_at)))
        await page.get_by_role("button", name="Run cleanup now").click()
        result = page.locator("#action-result")
        await expect(result).to_contain_text("Run cleanup now: done")
        await expect(result).to_contain_text("idle: 2")
        await expect(alice.locator("td.status")).to_have_text("stopped")
        await expect(alice.locator("td").last).to_have_text("idle")
        for user, sandbox_id in ids.items():
            body = await live.status(sandbox_id, user)
            assert (body["status"], body["reason"]) == ("stopped", "idle")
        # The service figures (the headline of /metrics) follow: the idle stops are counted.
        figures = page.locator("#figures div")
        await expect(figures.filter(has_text="Stops by reason").locator("dd")).to_contain_text(
            "idle"
        )
        await expect(figures.filter(has_text="Requests").locator("dd")).not_to_have_text("0")
        await shot(page, "admin-2-after-cleanup")

        # Pause and resume the reaper.
        await page.get_by_role("button", name="Pause reaper").click()
        await expect(result).to_contain_text("paused: true")
        await expect(state.locator("div").filter(has_text="Reaper").locator("dd")).to_have_text(
            "paused"
        )
        await page.get_by_role("button", name="Start reaper").click()
        await expect(result).to_contain_text("paused: false")
        stats = (await live.client.get(f"{API}/cleanup", headers=ADMIN)).json()["stats"]
        assert stats["paused"] is False
        assert problems == []
        await page.context.close()
