"""The demo page in headless Chromium: it starts a preview of the example project, shows the
build live, renders the cafe site inside its cross-site iframe (no cookie involved), heartbeats
while visible, pauses while hidden, resumes at once, stops the sandbox when the tab closes, warns
when little preview time is left, and shows the server's error with a way out."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, Request, expect

from tests.conftest import Backend
from tests.web.conftest import (
    API,
    CAFE_JSON,
    CAFE_NAME,
    eventually,
    live_server,
    set_visibility,
    shot,
    watch,
)

INTERVAL = 2  # HEARTBEAT_INTERVAL_SECONDS for these tests


def record_heartbeats(page: Any) -> list[tuple[float, bool]]:
    beats: list[tuple[float, bool]] = []

    def on_request(request: Request) -> None:
        if request.url.endswith(f"{API}/daytona/heartbeat") and request.method == "POST":
            beats.append((time.monotonic(), bool(json.loads(request.post_data or "{}")["visible"])))

    page.on("request", on_request)
    return beats


async def test_demo_page_previews_the_example_and_stops_when_closed(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with live_server(tmp_path, pg_backend, heartbeat_interval_seconds=INTERVAL) as live:
        context = await browser.new_context(viewport={"width": 1280, "height": 1500})
        page = await context.new_page()
        problems = watch(page)
        beats = record_heartbeats(page)
        await page.goto(f"{live.url}/test")

        # The example project, Thai and English, straight from test-cafe.json.
        await expect(page.locator("#project-card h3")).to_have_text(CAFE_NAME)
        await expect(page.locator("#project-card")).to_contain_text("กาแฟดริปจากดอยช้าง")
        await expect(page.locator("#project-card")).to_contain_text("Slow coffee")
        assert json.loads(await page.input_value("#prompt-json")) == json.loads(
            CAFE_JSON.read_text(encoding="utf-8")
        )
        await expect(page.locator("#user-id")).to_have_value("demo-user")
        await shot(page, "demo-1-ready")

        await page.get_by_role("button", name="Start preview").click()
        # Live build: log lines from the event stream, steps, a progress bar, elapsed time.
        await expect(page.locator("#log li").first).to_be_visible(timeout=20_000)
        await expect(page.locator("#status-line")).to_contain_text("Running", timeout=20_000)
        await expect(page.locator("#steps li[data-state=done]")).to_contain_text(
            ["requested", "creating", "uploading", "starting", "running"]
        )
        assert await page.eval_on_selector("#progress", "p => p.value === p.max")
        assert float((await page.text_content("#elapsed") or "0 s").split()[0]) > 0
        sandbox_id = await page.get_attribute("#preview", "data-sandbox-id")
        assert sandbox_id

        # The cafe site renders inside the page's iframe, which is on another site…
        frame = page.frame_locator("#frame")
        await expect(frame.get_by_text(CAFE_NAME).first).to_be_visible(timeout=15_000)
        src = await page.get_attribute("#frame", "src")
        assert src is not None
        host = urlsplit(src).hostname or ""
        assert host.endswith(".preview.localhost") and host.startswith(f"3000-{sandbox_id}-")
        status = await live.status(sandbox_id, "demo-user")
        assert src == status["openUrl"]
        assert await page.get_attribute("#open-link", "href") == src
        # …and no cookie carries the credential: it is in the host name.
        assert await context.cookies() == []

        # Heartbeats while visible, at the interval the server gave.
        await expect(page.locator("#heartbeat")).to_have_attribute("data-state", "ok")
        await eventually(lambda: _count(beats, visible=True, at_least=2), timeout=3 * INTERVAL + 2)
        await expect(page.locator("#heartbeat-text")).to_contain_text("Heartbeat")
        await expect(page.locator("#quota-text")).to_contain_text("of 1 h 00 min")
        await shot(page, "demo-2-running")

        # Hidden tab: one `visible: false` heartbeat, then nothing.
        await set_visibility(page, "hidden")
        await eventually(lambda: _count(beats, visible=False, at_least=1), timeout=3)
        hidden_at = len(beats)
        await expect(page.locator("#heartbeat")).to_have_attribute("data-state", "paused")

        async def seen_hidden() -> bool:
            rows = {r["sandboxId"]: r for r in await live.admin_rows()}
            return rows[sandbox_id]["visible"] is False

        await eventually(seen_hidden, timeout=3)
        await asyncio.sleep(INTERVAL * 1.6)
        assert len(beats) == hidden_at, "heartbeats went on while the tab was hidden"
        assert (await live.status(sandbox_id, "demo-user"))["status"] == "running"
        await shot(page, "demo-3-hidden")

        # Visible again: a `visible: true` heartbeat right away, not one interval later.
        shown = time.monotonic()
        await set_visibility(page, "visible")
        await eventually(lambda: _count(beats[hidden_at:], visible=True, at_least=1), timeout=3)
        assert beats[hidden_at][0] - shown < INTERVAL / 2
        await expect(page.locator("#heartbeat")).to_have_attribute("data-state", "ok")
        assert problems == []

        # Closing the tab stops the sandbox (a keepalive request on pagehide).
        workspace = live.settings.data_dir / "sandboxes" / sandbox_id
        assert workspace.exists()
        await page.close(run_before_unload=True)
        stopped = await live.wait_status(sandbox_id, "demo-user", "stopped", timeout=10)
        assert stopped["reason"] == "user"
        assert not workspace.exists()
        await context.close()


def _count(beats: list[tuple[float, bool]], *, visible: bool, at_least: int) -> bool:
    return sum(1 for _, v in beats if v is visible) >= at_least


async def test_phone_viewport_shows_the_quota_warning_and_stops(
    tmp_path: Path, browser: Browser
) -> None:
    backend = Backend("embedded", None, None)  # the embedded default (the others use Postgres)
    # 4 minutes a day, warned under 5: the warning is up from the first heartbeat.
    async with live_server(
        tmp_path,
        backend,
        heartbeat_interval_seconds=INTERVAL,
        daily_usage_cap_seconds=240,
        usage_warning_seconds=300,
    ) as live:
        context = await browser.new_context(
            viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
        )
        page = await context.new_page()
        problems = watch(page)
        await page.goto(f"{live.url}/test")
        await expect(page.locator("#project-card h3")).to_have_text(CAFE_NAME)
        await page.get_by_label("User id").fill("phone-user")
        await page.get_by_role("button", name="Start preview").click()

        frame = page.frame_locator("#frame")
        await expect(frame.get_by_text(CAFE_NAME).first).to_be_visible(timeout=20_000)
        warning = page.locator("#quota-warning")
        await expect(warning).to_be_visible()
        await expect(warning).to_contain_text("left today")
        await expect(page.locator("#quota-bar")).to_have_class("bar low")
        await expect(page.locator("#quota-text")).to_contain_text("of 4 min 00 s")

        # Usable at phone width: nothing wider than the screen, the controls reachable.
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        for name in ("Stop", "Open in new tab"):
            box = await page.get_by_role(
                "button" if name == "Stop" else "link", name=name
            ).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390
        await page.locator("#preview").scroll_into_view_if_needed()
        await shot(page, "demo-4-phone-quota-warning")

        sandbox_id = await page.get_attribute("#preview", "data-sandbox-id")
        assert sandbox_id
        await page.get_by_role("button", name="Stop").click()
        await expect(page.locator("#status-line")).to_contain_text("stopped")
        await expect(page.locator("#preview")).to_be_hidden()
        assert (await live.status(sandbox_id, "phone-user"))["status"] == "stopped"
        await shot(page, "demo-5-phone-stopped", full_page=True)
        assert problems == []
        await context.close()


async def test_errors_show_the_server_message_and_a_way_out(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with live_server(tmp_path, pg_backend, heartbeat_interval_seconds=INTERVAL) as live:
        # The user already has a preview running elsewhere (limit: one at a time).
        other = await live.client.post(
            f"{API}/daytona",
            json={"projectId": "other", "files": [{"path": "index.html", "content": "<p>x</p>"}]},
            headers={"X-User-Id": "busy-user"},
        )
        assert other.status_code == 202, other.text
        other_id = other.json()["sandboxId"]

        page = await (
            await browser.new_context(viewport={"width": 1280, "height": 1100})
        ).new_page()
        await page.goto(f"{live.url}/test")
        await expect(page.locator("#project-card h3")).to_have_text(CAFE_NAME)
        await page.get_by_label("User id").fill("busy-user")

        # Invalid promptJson never reaches the server: the field says why.
        await page.locator("#json-box summary").click()
        await page.locator("#prompt-json").fill("{not json")
        await page.get_by_role("button", name="Start preview").click()
        await expect(page.locator("#json-error")).to_contain_text("Not valid JSON")
        await page.get_by_role("button", name="Reset to the example").click()
        await expect(page.locator("#json-error")).to_have_text("")

        await page.get_by_role("button", name="Start preview").click()
        error = page.locator("#error")
        await expect(error).to_be_visible()
        await expect(error).to_contain_text("You already have 1 preview(s) running")
        await expect(error).to_contain_text("Stop your other preview first")
        await shot(page, "demo-6-concurrency-error")

        await error.get_by_role("button", name="Replace it with this one").click()
        await expect(page.frame_locator("#frame").get_by_text(CAFE_NAME).first).to_be_visible(
            timeout=20_000
        )
        await expect(error).to_be_hidden()
        replaced = await live.status(other_id, "busy-user")
        assert (replaced["status"], replaced["reason"]) == ("stopped", "replaced")
        await page.context.close()
