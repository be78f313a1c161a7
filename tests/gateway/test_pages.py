"""What a preview host answers when there is no site to show yet, or any more: the building page
and its event channel while the sandbox builds (the link works from the start), the stopped
page after a stop or a failed build; programs get status codes. `/__midori/` is the gateway's
own and never reaches the sandbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import Backend, Running, user_headers
from tests.gateway.conftest import SITE_SERVER, provider_app
from tests.previews.helpers import API, SSE, TOKEN_HEADER, files_body, read_sse
from tests.support.waiting import eventually

HTML = {"Accept": "text/html,application/xhtml+xml"}
# Two gates in the install step: the build waits (on conditions the test sets) with a Thai log
# line before each, so a page can be looked at while the sandbox builds.
GATED = (
    "echo 'กำลังติดตั้ง step one'; while [ ! -f go1 ]; do sleep 0.05; done; "
    "echo 'ขั้นที่สอง step two'; while [ ! -f go2 ]; do sleep 0.05; done"
)


@pytest.fixture
async def local(tmp_path: Path, pg_backend: Backend) -> AsyncIterator[Running]:
    async with provider_app(tmp_path, pg_backend, "local") as (running, _):
        yield running


async def building(running: Running) -> tuple[dict[str, object], Path]:
    body = files_body(
        "gated", {"server.py": SITE_SERVER}, install=GATED, start="exec python3 server.py"
    )
    res = await running.client.post(API, json=body, headers=user_headers())
    assert res.status_code == 202, res.text
    sandbox_id = res.json()["sandboxId"]
    work = running.settings.data_dir / "sandboxes" / sandbox_id / "work"

    async def installing() -> bool:
        return (await status_of(running, sandbox_id))["status"] == "installing"

    await eventually(installing, within=20, what="the build reached install")
    return await status_of(running, sandbox_id), work


async def status_of(running: Running, sandbox_id: str) -> dict[str, object]:
    res = await running.client.get(f"{API}/{sandbox_id}", headers=user_headers())
    return dict(res.json())


def host(status: dict[str, object], link: str) -> str:
    return str(status[link]).split("//", 1)[1].rstrip("/")


async def test_a_building_preview_answers_its_build_then_its_site(local: Running) -> None:
    status, work = await building(local)
    assert status["previewToken"] and status["previewUrl"] and status["openUrl"]
    token = {"Host": host(status, "previewUrl"), TOKEN_HEADER: str(status["previewToken"])}

    program = await local.client.get("/", headers=token)
    assert program.status_code == 503 and program.headers["retry-after"] == "2"

    page = await local.client.get("/any/path", headers={"Host": host(status, "openUrl"), **HTML})
    assert page.status_code == 200  # a page to show: no error in the browser's console
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors" not in page.headers["content-security-policy"]  # embeds anywhere
    assert "<script>" not in page.text and 'src="/__midori/page.js"' in page.text
    assert 'data-step="installing" data-state="current"' in page.text
    assert 'data-step="uploading" data-state="done"' in page.text

    script = await local.client.get("/__midori/page.js", headers={"Host": host(status, "openUrl")})
    assert script.status_code == 200 and "EventSource" in script.text
    assert script.headers["content-type"].startswith("text/javascript")

    # The channel: the build so far, then new events as they come, on the preview host.
    anonymous = await local.client.get("/__midori/events", headers={"Host": token["Host"]})
    assert anonymous.status_code == 401
    async with (
        asyncio.timeout(30),
        local.client.stream("GET", "/__midori/events", headers=token) as res,
    ):
        assert res.headers["content-type"].startswith("text/event-stream")
        events = read_sse(res.aiter_lines())
        seen = await until(events, lambda e: e.event == "log" and "step one" in e.data["line"])
        assert any(e.data.get("status") == "installing" for e in seen if e.event == "status")
        (work / "go1").touch()
        await until(events, lambda e: e.event == "log" and e.data["line"] == "ขั้นที่สอง step two")
        (work / "go2").touch()
        await until(events, lambda e: e.event == "status" and e.data["status"] == "running")

    site = await local.client.get("/", headers={"Host": host(status, "openUrl"), **HTML})
    assert site.status_code == 200 and "บ้านกาแฟ site" in site.text
    row = await local.app.state.services.db.sandboxes.get(status["sandboxId"])
    assert row.last_heartbeat_at == row.ready_at, "the channel and the pages are no viewer"


async def until(events: AsyncIterator[SSE], wanted: object) -> list[SSE]:
    seen: list[SSE] = []
    async for event in events:
        seen.append(event)
        if wanted(event):  # type: ignore[operator]
            return seen
    raise AssertionError(f"the stream ended first: {seen}")


async def test_a_failed_build_answers_why(local: Running) -> None:
    body = files_body("broken", {"index.html": "x"}, build="echo 'ผิดพลาด broke' >&2; exit 3")
    res = await local.client.post(API, json=body, headers=user_headers())
    sandbox_id = res.json()["sandboxId"]
    before = await status_of(local, sandbox_id)
    await local.wait_until(sandbox_id, "error")
    name = host(before, "openUrl")  # handed out from the start
    page = await local.client.get("/", headers={"Host": name, **HTML})
    assert page.status_code == 200
    assert "The build failed at “build”." in page.text
    assert "(exit code 3)" in page.text and "ผิดพลาด broke" in page.text
    assert 'id="restart"' in page.text
    program = await local.client.get(
        "/", headers={"Host": name, TOKEN_HEADER: str(before["previewToken"])}
    )
    assert program.status_code == 404


async def test_reserved_paths_never_reach_the_sandbox(local: Running) -> None:
    body = files_body("site", {"server.py": SITE_SERVER}, start="exec python3 server.py")
    res = await local.client.post(API, json=body, headers=user_headers())
    status = await local.wait_until(res.json()["sandboxId"], "running")
    token = {"Host": host(status, "previewUrl"), TOKEN_HEADER: status["previewToken"]}
    assert (await local.client.get("/nothing-here", headers=token)).text == "no such page"
    ours = await local.client.get("/__midori/nothing-here", headers=token)
    assert ours.status_code == 404 and ours.text == "Preview not found"
    # A running preview's channel stays open for what comes next (it replays the build first).
    async with (
        asyncio.timeout(10),
        local.client.stream("GET", "/__midori/events", headers=token) as res,
    ):
        events = read_sse(res.aiter_lines())
        await until(events, lambda e: e.event == "status" and e.data["status"] == "running")
