"""A dev server's hot reload through the gateway, on both providers: the vite template run as a
Vite dev server in the sandbox, opened in headless Chromium at the service's preview host; a
stylesheet changed in the sandbox reaches the open page over Vite's WebSocket (through the
gateway, and on Daytona through Daytona's proxy too), without the page reloading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, expect

from midori_preview.templates import render_template
from tests.conftest import Backend, user_headers
from tests.gateway.conftest import PROVIDERS, provider_app, provider_workdir
from tests.previews.helpers import API, files_body
from tests.support.servers import free_port
from tests.support.waiting import eventually
from tests.web.conftest import CAFE_JSON, CAFE_NAME, shot, watch

START = 'exec node_modules/.bin/vite --port "$PORT" --strictPort --host 127.0.0.1'
CHANGED = "rgb(1, 2, 3)"


@pytest.fixture(scope="session")
def npm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One npm download cache for both providers' sandboxes (the first install fills it)."""
    return tmp_path_factory.mktemp("npm-cache")


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_dev_servers_hot_reload_reaches_the_open_page(
    kind: str, tmp_path: Path, pg_backend: Backend, browser: Browser, npm_cache: Path
) -> None:
    # Local sandboxes get DATA_DIR/cache/npm as their npm cache; Daytona's (the emulator's) see
    # this host's /tmp, so their install names the cache itself.
    (tmp_path / "data" / "cache").mkdir(parents=True)
    (tmp_path / "data" / "cache" / "npm").symlink_to(npm_cache)
    install = "npm ci --no-audit --no-fund --prefer-offline"
    if kind == "daytona":
        install += f" --cache {npm_cache}"
    build = render_template("vite", json.loads(CAFE_JSON.read_text(encoding="utf-8")))
    files = {f.path: f.content for f in build.files}
    body = files_body("vite-dev", files, install=install, start=START, port=free_port())

    async with provider_app(tmp_path, pg_backend, kind) as (running, emulator):
        res = await running.client.post(API, json=body, headers=user_headers())
        assert res.status_code == 202, res.text
        status = await running.wait_until(res.json()["sandboxId"], "running")
        stylesheet = provider_workdir(running, emulator, status["sandboxId"]) / "src" / "style.css"

        page = await (await browser.new_context()).new_page()
        problems = watch(page)
        logs: list[str] = []

        def on_console(message: ConsoleMessage) -> None:
            logs.append(message.text)

        page.on("console", on_console)
        await page.goto(status["openUrl"])
        await expect(page.get_by_text(CAFE_NAME).first).to_be_visible(timeout=30_000)
        await eventually(
            lambda: any("[vite] connected" in line for line in logs),
            within=30,
            what="Vite's client connected its WebSocket through the gateway",
        )
        await page.evaluate("window.__same_page = true")
        outline = "getComputedStyle(document.body).outlineColor"
        assert await page.evaluate(outline) != CHANGED

        stylesheet.write_text(
            stylesheet.read_text(encoding="utf-8")
            + f"\nbody {{ outline: 3px solid {CHANGED}; }}\n",
            encoding="utf-8",
        )
        await page.wait_for_function(f"{outline} === {json.dumps(CHANGED)}", timeout=30_000)
        assert await page.evaluate("window.__same_page === true"), "updated, not reloaded"
        assert "[vite] hot updated: /src/style.css" in logs, logs
        # The site has no favicon: the browser's own request for one is the only miss.
        assert [p for p in problems if "/favicon.ico" not in p] == [], problems
        await shot(page, f"gateway-7-hot-reload-{kind}")
