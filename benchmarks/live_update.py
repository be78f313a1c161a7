"""Live update timing for `make bench`: from `PUT …/{id}/source` with a new promptJson to the
open page (headless Chromium, the preview's `openUrl`) showing the new site name — the update
applied, the `updated` event on the preview host's channel, the gateway's reload script
reloading the page, the page rendered (the vite template fetches its prompt.json after load).

Self-contained (it only needs the served service's base URL and an httpx client), so that
`bench.py` calls it with one line: `rows += await live_update_rows(server.base, server.client,
runs)`. Runs alone too: `.venv/bin/python benchmarks/live_update.py --base http://127.0.0.1:8000`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

API = "/api/preview/daytona"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PROMPT: dict[str, Any] = {
    "name": "บ้านกาแฟ Baan Kafae",
    "tagline": "Slow coffee from the hills of Chiang Rai",
    "language": "th",
    "sections": [{"type": "about", "title": "About us", "body": "A six-seat bar in Nimman."}],
}
TEMPLATES = (("static", "static template"), ("vite", "vite template (built)"))
Row = list[str]


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ok(res: httpx.Response, what: str) -> Any:
    if res.status_code >= 400:
        raise RuntimeError(f"{what}: HTTP {res.status_code}: {res.text[:300]}")
    return res.json()


async def _running(base: str, client: httpx.AsyncClient, body: dict[str, Any], user: str) -> Any:
    headers = {"X-User-Id": user}
    sid = _ok(await client.post(f"{base}{API}", json=body, headers=headers), "create")["sandboxId"]
    deadline = time.monotonic() + 300  # the vite template's first build runs npm
    while time.monotonic() < deadline:
        status = _ok(await client.get(f"{base}{API}/{sid}", headers=headers), "status")
        if status["status"] == "running":
            return status
        if status["status"] in ("error", "stopped"):
            raise RuntimeError(f"preview {sid} failed: {status.get('error')}")
        await asyncio.sleep(0.02)
    raise RuntimeError(f"preview {sid} did not start")


@asynccontextmanager
async def _browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def _shows(page: Any, name: str) -> None:
    await page.wait_for_function(
        "(name) => document.body && document.body.innerText.includes(name)",
        arg=name,
        timeout=30_000,
        polling="raf",
    )


async def _time_updates(
    base: str, client: httpx.AsyncClient, browser: Any, template: str, runs: int
) -> list[float]:
    user = f"lu-{template}"
    status = await _running(
        base,
        client,
        {"projectId": f"lu-{template}", "promptJson": PROMPT, "template": template},
        user,
    )
    sid, headers = status["sandboxId"], {"X-User-Id": user}
    page = await (await browser.new_context()).new_page()
    try:
        await page.goto(status["openUrl"])
        await _shows(page, PROMPT["name"])
        times = []
        for i in range(runs):
            name = f"Kafae update {i} {time.time_ns()}"
            started = time.perf_counter()
            body = {"promptJson": {**PROMPT, "name": name}}
            _ok(await client.put(f"{base}{API}/{sid}/source", json=body, headers=headers), "update")
            await _shows(page, name)
            times.append(time.perf_counter() - started)
        return times
    finally:
        await page.context.close()
        await client.post(f"{base}{API}/stop", json={"sandboxId": sid}, headers=headers)


async def live_update_rows(base: str, client: httpx.AsyncClient, runs: int) -> list[Row]:
    """`update → reloaded page` rows (median, p95) per template; one row saying why when there
    is no Chromium to measure with."""
    if not HAVE_CHROMIUM:
        return [["update → reloaded page", "not measured", f"no {CHROMIUM}", "-"]]
    rows = []
    async with _browser() as browser:
        for template, label in TEMPLATES:
            times = await _time_updates(base, client, browser, template, max(runs, 2))
            median, p95 = statistics.median(times) * 1000, _pct(times, 0.95) * 1000
            rows.append(
                [f"update → reloaded page: {label} (promptJson)", f"{median:.0f} ms",
                 f"p95 {p95:.0f} ms", f"{len(times)} updates"]
            )  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base", default="http://127.0.0.1:8000", help="The running service.")
    parser.add_argument("--runs", type=int, default=20, help="Updates timed per template.")
    args = parser.parse_args()

    async def run() -> list[Row]:
        async with httpx.AsyncClient(timeout=60, trust_env=False) as client:
            return await live_update_rows(args.base, client, args.runs)

    for row in asyncio.run(run()):  # (the service's UPDATE_RATE_PER_MINUTE must allow --runs)
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
