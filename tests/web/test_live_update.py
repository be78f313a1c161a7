"""Live update in headless Chromium, on both providers and both templates: the demo page shows a
running preview in its cross-site iframe; the promptJson is edited and "Apply changes" pressed;
the new site name appears in the iframe — the gateway's reload script reloaded the page, keeping
its scroll position — and the preview is the same sandbox, one version further."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.conftest import Backend
from tests.gateway.conftest import PROVIDERS, provider_app
from tests.web.conftest import CAFE_JSON, CAFE_NAME, shot, watch

NEW_NAME = "Kafae Live Update"


@pytest.fixture(scope="session")
def npm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npm-cache-live-update")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("template", ["static", "vite"])
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_apply_changes_shows_the_new_site_name_in_the_same_preview(
    kind: str,
    template: str,
    tmp_path: Path,
    pg_backend: Backend,
    browser: Browser,
    npm_cache: Path,
) -> None:
    (tmp_path / "data" / "cache").mkdir(parents=True)
    (tmp_path / "data" / "cache" / "npm").symlink_to(npm_cache)
    async with provider_app(tmp_path, pg_backend, kind, build_step_timeout_seconds=400) as (
        running,
        _,
    ):
        page = await (
            await browser.new_context(viewport={"width": 1280, "height": 1400})
        ).new_page()
        problems = watch(page)
        await page.goto(f"http://127.0.0.1:{running.settings.port}/test")
        await expect(page.locator("#project-card h3")).to_have_text(CAFE_NAME)
        await page.check(f"input[name=template][value={template}]")
        await page.click("#start")
        frame = page.frame_locator("#frame")
        await expect(frame.get_by_text(CAFE_NAME).first).to_be_visible(timeout=400_000)
        [row] = await running.services.db.sandboxes.live_for_user("demo-user")
        assert row.version == 1

        inner = next(f for f in page.frames if f.url.startswith("http://3000-"))
        await inner.evaluate("window.scrollTo(0, 200)")
        scrolled = await inner.evaluate("window.scrollY")
        assert scrolled == 200, "the site in the iframe scrolls"

        prompt = json.loads(CAFE_JSON.read_text(encoding="utf-8"))
        prompt["name"] = NEW_NAME
        await page.click("#json-box summary")
        await page.fill("#prompt-json", json.dumps(prompt, ensure_ascii=False, indent=2))
        await page.click("#apply")
        await expect(page.locator("#apply-note")).to_have_attribute("data-version", "2")
        await expect(frame.get_by_text(NEW_NAME).first).to_be_visible(timeout=30_000)
        await expect(frame.get_by_text(CAFE_NAME)).to_have_count(0)

        [after] = await running.services.db.sandboxes.live_for_user("demo-user")
        assert after.id == row.id and after.version == 2  # the same sandbox, updated
        inner = next(f for f in page.frames if f.url.startswith("http://3000-"))
        # Reloaded where the reader was (the vite page renders after load: it is waited for).
        await inner.wait_for_function("window.scrollY === 200", timeout=10_000)
        await shot(page, f"live-update-{template}-{kind}")
        # The site has no favicon: the browser's own request for one is the only miss.
        assert [p for p in problems if "/favicon.ico" not in p] == [], problems
