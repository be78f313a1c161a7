"""Browser-side fixtures: the service behind a real uvicorn server on a free port (so preview
URLs point at it), headless Debian Chromium driven by Playwright, session cookies minted by the
real next-auth / @auth/core packages, and screenshots kept under test-artifacts/web/."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from midori_preview.app import create_app
from midori_preview.settings import Settings
from tests.conftest import Backend, make_settings
from tests.support.servers import drop_redis_keys, free_port, uvicorn_serving

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "web"
NODE_DIR = Path(__file__).resolve().parent / "node"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
CAFE_JSON = ROOT / "src" / "midori_preview" / "web" / "static" / "examples" / "test-cafe.json"
CAFE_NAME = "บ้านกาแฟ Baan Kafae"
API = "/api/preview"

# Assertions on a page wait for their condition; on a loaded machine (the suite beside two busy
# loops) a render can take longer than Playwright's 5 s default, so the bound is generous. A
# passing check still returns as soon as its condition holds.
expect.set_options(timeout=30_000)


@dataclass
class Live:
    """A served app: its settings, base URL and an httpx client for checks behind the page."""

    app: Any
    settings: Settings
    port: int
    client: httpx.AsyncClient

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}"

    async def status(self, sandbox_id: str, user: str) -> dict[str, Any]:
        """The sandbox's status as `user` sees it (X-User-Id, or a bearer JWT in jwt mode)."""
        if self.settings.auth_jwt_secret is not None:
            headers = {"Authorization": f"Bearer {bearer(self.settings, user)}"}
        else:
            headers = {"X-User-Id": user}
        res = await self.client.get(
            f"{API}/daytona/status", params={"sandboxId": sandbox_id}, headers=headers
        )
        assert res.status_code == 200, res.text
        return dict(res.json())

    async def admin_rows(self) -> list[dict[str, Any]]:
        res = await self.client.get(f"{API}/admin/sandboxes", headers=ADMIN)
        assert res.status_code == 200, res.text
        return list(res.json()["sandboxes"])

    async def wait_status(
        self, sandbox_id: str, user: str, *statuses: str, timeout: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            body = await self.status(sandbox_id, user)
            if body["status"] in statuses:
                return body
            assert time.monotonic() < deadline, f"still {body['status']}, wanted {statuses}"
            await asyncio.sleep(0.1)


ADMIN = {"X-User-Id": "root", "X-User-Role": "admin"}


def bearer(settings: Settings, user: str, role: str = "user") -> str:
    """A service JWT (what a Next.js route handler would mint from the session)."""
    assert settings.auth_jwt_secret is not None
    claims = {"sub": user, "role": role, "exp": int(time.time()) + 600}
    return jwt.encode(claims, settings.auth_jwt_secret.get_secret_value(), algorithm="HS256")


@asynccontextmanager
async def live_server(tmp_path: Path, backend: Backend, **overrides: Any) -> AsyncIterator[Live]:
    port = free_port()
    settings = make_settings(
        tmp_path, backend, host="127.0.0.1", port=port, preview_public_port=port, **overrides
    )
    app = create_app(settings)
    try:
        async with (
            uvicorn_serving(app, port),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30
            ) as client,
        ):
            yield Live(app, settings, port, client)
    finally:
        await drop_redis_keys(settings)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/system-deps installs Debian chromium")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def watch(page: Page) -> list[str]:
    """Errors the page reports (uncaught exceptions, console errors): a test asserts none."""
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            problems.append(f"console: {msg.text} ({msg.location.get('url')})")

    page.on("console", on_console)
    return problems


async def shot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Keep a screenshot as a test artifact (viewport by default: full-page captures leave
    cross-site iframes blank)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def set_visibility(page: Page, state: str) -> None:
    """Emulate the tab being hidden/shown: the page sees `document.visibilityState` change and
    gets a `visibilitychange` event, as on a real tab switch."""
    await page.evaluate(
        """(state) => {
            const values = { visibilityState: state, hidden: state === "hidden" };
            for (const [name, value] of Object.entries(values)) {
                Object.defineProperty(document, name, { configurable: true, get: () => value });
            }
            document.dispatchEvent(new Event("visibilitychange"));
        }""",
        state,
    )


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10) -> None:
    """Wait until `check()` (plain or async) is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# --- session cookies minted by the real libraries ---------------------------------------------

Mint = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def mint() -> Iterator[Mint]:
    """`mint([{format, claims, secret, ...}])` → `[{token, cookies}]` from tests/web/node/mint.mjs
    (next-auth@4 `encode` and @auth/core `encode`). Installs the pinned packages (`npm ci`) the
    first time."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed to mint NextAuth cookies (apt-get install nodejs npm)")
    lock = NODE_DIR / "package-lock.json"
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "npm_config_update_notifier": "false"},
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci in {NODE_DIR} failed (the npm registry is needed):\n{done.stderr}")

    def run(requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done = subprocess.run(
            [node, "mint.mjs"],
            cwd=NODE_DIR,
            input=json.dumps(requests),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return list(json.loads(done.stdout))

    yield run
