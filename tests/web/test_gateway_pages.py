"""The gateway in headless Chromium, inside a cross-site iframe (an embedding page on another
site, as the Midori project page is): a Daytona preview renders with no warning page; a building
preview shows its build live and turns into the site by itself; a stopped preview says why and
asks the embedding page to start it again; the demo page does so."""

from __future__ import annotations

import html
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from playwright.async_api import Browser, Frame, Page, expect

from tests.conftest import Backend, Running, user_headers
from tests.gateway.conftest import provider_app
from tests.gateway.test_emulator_preview import CHROME
from tests.previews.helpers import API, files_body
from tests.support.servers import free_port
from tests.web.conftest import CAFE_NAME, live_server, shot, watch

SITE = {"index.html": f"<!doctype html><meta charset=utf-8><h1>{CAFE_NAME}</h1>\n"}
GATED = (
    "echo 'กำลังติดตั้ง step one'; while [ ! -f go1 ]; do sleep 0.05; done; "
    "echo 'ขั้นที่สอง step two'; while [ ! -f go2 ]; do sleep 0.05; done"
)


@asynccontextmanager
async def embedder() -> AsyncIterator[str]:
    """An embedding page on another site than `*.preview.localhost` (127.0.0.1, served for real:
    Chromium refuses local frames in pages it did not load from this machine). `?src=` is what
    its iframe shows; it records the messages its frames post (`window.__messages`)."""

    async def page(request: web.Request) -> web.Response:
        src = html.escape(request.query["src"])
        body = (
            "<!doctype html><meta charset=utf-8><title>Midori project</title>"
            '<link rel="icon" href="data:,">'
            '<script src="/record.js"></script>'
            f'<iframe id="frame" src="{src}" style="width:960px;height:640px"></iframe>'
        )
        return web.Response(text=body, content_type="text/html")

    async def script(request: web.Request) -> web.Response:
        code = (
            "window.__messages = []; addEventListener('message', (e) => __messages.push(e.data));"
        )
        return web.Response(text=code, content_type="text/javascript")

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/record.js", script)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


async def embed(page: Page, origin: str, src: str) -> Frame:
    """Open the embedding page at `origin` with `src` in its iframe: the iframe's frame."""
    await page.goto(f"{origin}?src={quote(src, safe='')}")
    handle = await page.wait_for_selector("#frame")
    frame = await handle.content_frame()
    assert frame is not None
    return frame


async def start(running: Running, body: dict[str, Any]) -> str:
    res = await running.client.post(API, json=body, headers=user_headers())
    assert res.status_code == 202, res.text
    return str(res.json()["sandboxId"])


async def status(running: Running, sandbox_id: str) -> dict[str, Any]:
    res = await running.client.get(f"{API}/{sandbox_id}", headers=user_headers())
    return dict(res.json())


async def test_a_daytona_preview_renders_in_a_cross_site_iframe_without_the_warning(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with (
        provider_app(tmp_path, pg_backend, "daytona") as (running, emulator),
        embedder() as origin,
    ):
        assert emulator is not None
        sandbox_id = await start(running, files_body("cafe", SITE, port=free_port()))
        shown = await running.wait_until(sandbox_id, "running")
        row = await running.app.state.services.db.sandboxes.get(sandbox_id)
        daytona_url = row.upstream_url
        assert daytona_url.startswith(emulator.base_url)
        assert emulator.base_url not in json.dumps(shown)  # callers never see Daytona's URL

        # A real browser's User-Agent: Daytona shows its warning page to these.
        context = await browser.new_context(user_agent=CHROME)
        page = await context.new_page()
        problems = watch(page)
        frame = await embed(page, origin, shown["openUrl"])
        await expect(frame.get_by_text(CAFE_NAME)).to_be_visible(timeout=15_000)
        assert "Preview URL Warning" not in await frame.content()
        assert (await frame.evaluate("location.host")) == shown["openUrl"].split("/")[2]
        assert await context.cookies() == []
        await shot(page, "gateway-1-daytona-iframe")

        # The same browser on Daytona's own URL meets the warning page: what the gateway spares.
        await page.evaluate(f"document.getElementById('frame').src = {json.dumps(daytona_url)}")
        await expect(frame.get_by_text("Preview URL Warning")).to_be_visible(timeout=15_000)
        assert problems == []
        await context.close()


async def test_a_building_preview_shows_its_build_then_turns_into_the_site(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with live_server(tmp_path, pg_backend) as live, embedder() as origin:
        running = Running(live.app, live.client, live.settings)
        body = files_body("gated", SITE, install=GATED)
        sandbox_id = await start(running, body)
        work = live.settings.data_dir / "sandboxes" / sandbox_id / "work"
        link = (await status(running, sandbox_id))["openUrl"]  # handed out while it builds
        assert link

        page = await (await browser.new_context()).new_page()
        problems = watch(page)
        frame = await embed(page, origin, link)
        await expect(frame.get_by_role("heading")).to_have_text("Building the preview…")
        await expect(frame.locator("#log")).to_contain_text("กำลังติดตั้ง step one")
        await expect(frame.locator('#steps li[data-step="installing"]')).to_have_attribute(
            "data-state", "current"
        )
        await frame.evaluate("window.__same_page = true")
        await shot(page, "gateway-2-building")

        (work / "go1").touch()  # the next log line arrives live, on the same page
        await expect(frame.locator("#log")).to_contain_text("ขั้นที่สอง step two")
        assert await frame.evaluate("window.__same_page === true")

        (work / "go2").touch()  # running: the page turns into the site by itself
        await expect(frame.get_by_text(CAFE_NAME)).to_be_visible(timeout=20_000)
        assert await frame.evaluate("window.__same_page === undefined")
        assert problems == []
        await shot(page, "gateway-3-turned-into-the-site")


async def test_a_stopped_preview_says_why_and_asks_for_a_restart(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with live_server(tmp_path, pg_backend) as live, embedder() as origin:
        running = Running(live.app, live.client, live.settings)
        sandbox_id = await start(running, files_body("cafe", SITE))
        link = (await running.wait_until(sandbox_id, "running"))["openUrl"]

        page = await (await browser.new_context()).new_page()
        problems = watch(page)
        frame = await embed(page, origin, link)
        await expect(frame.get_by_text(CAFE_NAME)).to_be_visible(timeout=15_000)
        await live.app.state.services.previews.stop(sandbox_id, reason="idle")
        await page.evaluate(f"document.getElementById('frame').src = {json.dumps(link)}")
        await expect(frame.locator(".lead")).to_have_text(
            "This preview stopped because nobody was watching it."
        )
        button = frame.get_by_role("button", name="Start it again")
        await expect(button).to_be_visible()
        await expect(frame.locator("#restart-note")).to_be_hidden()
        await shot(page, "gateway-4-stopped")
        await button.click()
        messages = await page.evaluate("window.__messages")
        assert messages == [{"type": "midori-preview:restart", "sandboxId": sandbox_id}]
        await expect(frame.locator("#restart")).to_be_disabled()
        await expect(frame.locator("#restart")).to_have_text("Starting again…")

        # Top level there is nobody to ask: the page says where to start it again.
        top = await page.context.new_page()
        await top.goto(link)
        await expect(top.locator("#restart-note")).to_be_visible()
        await expect(top.get_by_role("button", name="Start it again")).to_be_hidden()
        assert problems == []


async def test_the_demo_page_starts_a_reaped_preview_again_from_its_frame(
    tmp_path: Path, pg_backend: Backend, browser: Browser
) -> None:
    async with live_server(tmp_path, pg_backend, heartbeat_interval_seconds=1) as live:
        page = await (
            await browser.new_context(viewport={"width": 1280, "height": 1400})
        ).new_page()
        problems = watch(page)
        await page.goto(f"{live.url}/test")
        await expect(page.locator("#project-card h3")).to_have_text(CAFE_NAME)
        await page.get_by_role("button", name="Start preview").click()
        frame = page.frame_locator("#frame")
        await expect(frame.get_by_text(CAFE_NAME).first).to_be_visible(timeout=20_000)
        first = await page.get_attribute("#preview", "data-sandbox-id")
        assert first

        # The service stops it (as the reaper does for an idle one): the next heartbeat learns,
        # and the frame shows why, with a way to start it again.
        await live.app.state.services.previews.stop(first, reason="idle")
        await expect(frame.locator(".lead")).to_contain_text("nobody was watching", timeout=10_000)
        await expect(page.locator("#status-line")).to_contain_text("nobody was watching")
        await shot(page, "gateway-5-demo-stopped")
        await frame.get_by_role("button", name="Start it again").click()

        await expect(page.locator("#preview")).not_to_have_attribute(
            "data-sandbox-id", first, timeout=10_000
        )
        await expect(frame.get_by_text(CAFE_NAME).first).to_be_visible(timeout=20_000)
        second = await page.get_attribute("#preview", "data-sandbox-id")
        assert second and second != first
        rows = {r["sandboxId"]: r for r in await live.admin_rows()}
        assert rows[second]["status"] == "running"
        old = await live.app.state.services.db.sandboxes.get(first)
        new = await live.app.state.services.db.sandboxes.get(second)
        assert new.source_digest == old.source_digest, "the same source, started again"
        # The heartbeat that learnt of the stop was answered 410, as it should be.
        assert [p for p in problems if "status of 410" not in p] == [], problems
        await shot(page, "gateway-6-demo-restarted")
