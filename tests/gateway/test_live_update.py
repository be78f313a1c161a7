"""Live update in place (`PUT /api/preview/daytona/{id}/source`), on both providers: a running
preview takes a new promptJson or new files in the same sandbox, its version grows, an `updated`
event goes out; identical sources are no-ops, incompatible ones a 409 naming the difference, a
failed rebuild leaves the previous version live, concurrent updates end with the newest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from midori_preview.templates import render_template
from tests.conftest import Backend, Running, user_headers
from tests.gateway.conftest import PROVIDERS, provider_app, provider_workdir
from tests.previews.helpers import (
    API,
    CAFE_NAME,
    SSE,
    TOKEN_HEADER,
    cafe_prompt,
    fetch_preview,
    files_body,
    read_events,
    read_sse,
    stop,
)
from tests.support.servers import free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(300)


async def put_source(
    running: Running, sandbox_id: str, body: dict[str, Any], *, user: str = "alice"
) -> httpx.Response:
    return await running.client.put(
        f"{API}/{sandbox_id}/source", json=body, headers=user_headers(user)
    )


async def status_of(running: Running, sandbox_id: str, user: str = "alice") -> dict[str, Any]:
    res = await running.client.get(f"{API}/{sandbox_id}", headers=user_headers(user))
    assert res.status_code == 200, res.text
    return dict(res.json())


async def start(running: Running, body: dict[str, Any]) -> dict[str, Any]:
    res = await running.client.post(API, json=body, headers=user_headers())
    assert res.status_code == 202, res.text
    return await running.wait_until(res.json()["sandboxId"], "running")


def renamed(name: str) -> dict[str, Any]:
    prompt = cafe_prompt()
    prompt["name"] = name
    return prompt


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_prompt_update_reaches_the_running_static_preview(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, _):
        status = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        sid = status["sandboxId"]
        assert status["version"] == 1 and status["updatedAt"] is None
        assert CAFE_NAME in (await fetch_preview(running, status)).text

        res = await put_source(running, sid, {"promptJson": renamed("Kafae Two")})
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["version"] == 2 and body["changed"] and not body["superseded"]
        # Only what the new name changed: the page and the data, not the stylesheet.
        assert sorted(body["uploaded"]) == ["index.html", "prompt.json"], body
        page = await fetch_preview(running, status)
        assert "Kafae Two" in page.text and CAFE_NAME not in page.text

        after = await status_of(running, sid)
        assert after["version"] == 2 and after["updatedAt"] == body["updatedAt"]
        assert after["previewUrl"] == status["previewUrl"]  # the same preview, the same links

        again = await put_source(running, sid, {"promptJson": renamed("Kafae Two")})
        assert again.status_code == 200, again.text
        assert again.json()["version"] == 2 and not again.json()["changed"]  # identical: no-op

        await stop(running, sid)
        events = await read_events(running, sid)
        updated = [e.data for e in events if e.event == "updated"]
        assert [u["version"] for u in updated] == [2], updated


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_an_update_that_needs_a_new_preview_is_a_409_naming_the_difference(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, _):
        prompt = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        res = await put_source(
            running, prompt["sandboxId"], {"promptJson": cafe_prompt(), "template": "vite"}
        )
        assert res.status_code == 409, res.text
        error = res.json()["error"]
        assert error["code"] == "source_incompatible"
        assert error["differences"] == {"template": {"preview": "static", "update": "vite"}}
        res = await put_source(
            running, prompt["sandboxId"], files_body("x", {"index.html": "<p>x</p>"})
        )
        assert res.status_code == 422  # projectId is not part of an update's body
        res = await put_source(running, prompt["sandboxId"], {"files": [], "deletions": ["a"]})
        assert res.status_code == 409 and "source" in res.json()["error"]["differences"]
        await stop(running, prompt["sandboxId"])

        port = free_port()
        site = await start(running, files_body("site", {"index.html": "<p>one</p>"}, port=port))
        sid = site["sandboxId"]
        res = await put_source(running, sid, {"files": [], "port": port + 1})
        assert res.status_code == 409, res.text
        assert res.json()["error"]["differences"] == {"port": {"preview": port, "update": port + 1}}
        res = await put_source(running, sid, {"files": [], "start": "exec python3 other.py"})
        assert res.status_code == 409 and list(res.json()["error"]["differences"]) == ["start"]
        assert (await status_of(running, sid))["version"] == 1


BUILD = "sh build.sh"
SERVE_OUT = 'exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory out'


def built_site(page: str, script: str = "mkdir -p out && cp page.html out/index.html") -> dict:
    return {"page.html": page, "build.sh": script}


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_failed_rebuild_leaves_the_previous_version_live(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, emulator):
        body = files_body(
            "built", built_site("<p>first</p>"), build=BUILD, start=SERVE_OUT, port=free_port()
        )
        status = await start(running, body)
        sid = status["sandboxId"]
        assert "first" in (await fetch_preview(running, status)).text

        broken = files_body("_", built_site("<p>second</p>", "echo oops >&2; exit 3"))
        del broken["projectId"]
        res = await put_source(running, sid, broken)
        assert res.status_code == 422, res.text
        error = res.json()["error"]
        assert error["code"] == "rebuild_failed" and error["step"] == "build"
        assert error["exitCode"] == 3 and "oops" in error["logsTail"]
        assert "first" in (await fetch_preview(running, status)).text  # still the old one
        workdir = provider_workdir(running, emulator, sid)
        assert (workdir / "page.html").read_text() == "<p>first</p>"  # nothing half-applied
        assert not (workdir / ".midori-next").exists()
        assert (await status_of(running, sid))["version"] == 1

        fixed = {"files": [{"path": "page.html", "content": "<p>third</p>"}], "deletions": []}
        res = await put_source(running, sid, fixed)
        assert res.status_code == 200, res.text
        assert res.json()["version"] == 2 and res.json()["rebuilt"]
        assert "third" in (await fetch_preview(running, status)).text

        gone = {"files": [], "deletions": ["page.html"]}
        res = await put_source(running, sid, gone)  # the build needs page.html: it fails
        assert res.status_code == 422 and (workdir / "page.html").exists()


GATED = (
    'while [ ! -f go ]; do sleep 0.05; done; exec python3 -m http.server "$PORT" --bind 127.0.0.1'
)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_concurrent_updates_end_with_the_newest_and_versions_only_grow(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    """Three updates of a preview still starting: each waits for it to run, the newest wins,
    the two it superseded answer with its version."""
    async with provider_app(tmp_path, pg_backend, kind) as (running, emulator):
        body = files_body("gated", {"index.html": "<p>v1</p>"}, start=GATED, port=free_port())
        res = await running.client.post(API, json=body, headers=user_headers())
        sid = res.json()["sandboxId"]
        redis = running.services.previews.updates.redis
        seq = running.services.previews.updates.key(sid, "seq")

        async def sequence() -> int:
            return int(await redis.get(seq) or 0)

        tasks = []
        for n in range(3):
            update = {"files": [{"path": "index.html", "content": f"<p>u{n}</p>"}]}
            tasks.append(asyncio.create_task(put_source(running, sid, update)))
            await eventually(lambda n=n: sequence_is(sequence, n + 1), within=60, what="a ticket")
        workdir = await _workdir_when_created(running, emulator, sid)
        (workdir / "go").write_text("")
        answers = [r.json() for r in await asyncio.gather(*tasks)]
        assert [a["version"] for a in answers] == [2, 2, 2], answers
        assert [a["superseded"] for a in answers] == [True, True, False], answers
        status = await status_of(running, sid)
        assert status["version"] == 2
        assert "u2" in (await fetch_preview(running, status)).text

        later = []
        for n in (3, 4):
            update = {"files": [{"path": "index.html", "content": f"<p>u{n}</p>"}]}
            later.append((await put_source(running, sid, update)).json()["version"])
        assert later == [3, 4]


async def sequence_is(sequence: Any, wanted: int) -> bool:
    return bool(await sequence() >= wanted)


async def _workdir_when_created(running: Running, emulator: Any, sid: str) -> Path:
    found: list[Path] = []

    def created() -> bool:
        try:
            found.append(provider_workdir(running, emulator, sid))
        except ValueError:
            return False
        return (found[-1] / "index.html").exists()

    await eventually(created, within=120, what="the sandbox's files are uploaded")
    return found[-1]


async def test_updates_of_someone_elses_or_a_stopped_preview_and_their_own_rate_limit(
    tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(
        tmp_path, pg_backend, "local", update_rate_per_minute=3, create_rate_per_minute=1
    ) as (running, _):
        status = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        sid = status["sandboxId"]
        update = {"promptJson": renamed("Mine")}
        res = await put_source(running, sid, update, user="mallory")
        assert res.status_code == 404 and res.json()["error"]["code"] == "sandbox_not_found"
        res = await put_source(running, "nosuchsandbox", update)
        assert res.status_code == 404
        for n in range(3):  # updates do not count against the create limit of 1 a minute
            assert (
                await put_source(running, sid, {"promptJson": renamed(f"n{n}")})
            ).status_code == 200
        res = await put_source(running, sid, update)
        assert res.status_code == 429 and res.json()["error"]["code"] == "rate_limited"
        assert int(res.headers["retry-after"]) > 0
        await stop(running, sid)
        res = await put_source(running, sid, update, user="alice")
        assert res.status_code == 410 and res.json()["error"]["reason"] == "user"


BROWSER = {"Accept": "text/html,application/xhtml+xml", "Accept-Encoding": "gzip"}


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_pages_carry_the_reload_script_and_the_channel_announces_new_versions(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, _):
        status = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        sid = status["sandboxId"]
        host = {"Host": status["previewUrl"].split("/")[2], TOKEN_HEADER: status["previewToken"]}

        page = await running.client.get("/", headers={**host, **BROWSER})
        assert page.status_code == 200 and "content-encoding" not in page.headers
        tag = '<script src="/__midori/reload.js" data-midori-version="1" async></script></body>'
        assert tag in page.text and int(page.headers["content-length"]) == len(page.content)
        program = await running.client.get("/", headers=host)  # not a browser: as served
        assert "/__midori/reload.js" not in program.text
        style = await running.client.get("/styles.css", headers={**host, **BROWSER})
        assert "/__midori/reload.js" not in style.text
        script = await running.client.get("/__midori/reload.js", headers={"Host": host["Host"]})
        assert script.status_code == 200 and "EventSource" in script.text

        before = await status_of(running, sid)
        assert (await put_source(running, sid, {"promptJson": renamed("Two")})).status_code == 200
        page = await running.client.get("/", headers={**host, **BROWSER})
        assert 'data-midori-version="2"' in page.text and "Two" in page.text

        # A page served at version 1 learns at once that version 2 is live; one served at 2 hears
        # of nothing until the next update. Neither is a viewer: no heartbeat is recorded.
        async with asyncio.timeout(30):
            stale = await first_event(running, host, 1)
            assert stale.event == "updated" and stale.data["version"] == 2
            async with running.client.stream(
                "GET", "/__midori/events?version=2", headers=host
            ) as res:
                events = read_sse(res.aiter_lines())
                assert (
                    await put_source(running, sid, {"promptJson": renamed("3")})
                ).status_code == 200
                fresh = await anext(e async for e in events if e.event != "status")
                assert fresh.event == "updated" and fresh.data["version"] == 3, fresh
        after = await status_of(running, sid)
        assert after["lastHeartbeatAt"] == before["lastHeartbeatAt"]


async def first_event(running: Running, host: dict[str, str], version: int) -> SSE:
    async with running.client.stream(
        "GET", f"/__midori/events?version={version}", headers=host
    ) as res:
        assert res.status_code == 200
        return await anext(e async for e in read_sse(res.aiter_lines()) if e.event != "status")


async def test_without_the_setting_pages_are_passed_on_as_served(
    tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, "local", preview_reload_script=False) as (
        running,
        _,
    ):
        status = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        host = {"Host": status["previewUrl"].split("/")[2], TOKEN_HEADER: status["previewToken"]}
        page = await running.client.get("/", headers={**host, **BROWSER})
        assert page.status_code == 200 and "/__midori/reload.js" not in page.text


HELD = "mkdir -p out && cp page.html out/index.html.new && touch started && " + (
    "while [ ! -f release ]; do sleep 0.05; done; mv out/index.html.new out/index.html"
)


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_the_previous_version_serves_until_the_rebuild_succeeds(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, emulator):
        first = built_site("<p>first</p>")
        body = files_body("held", first, build=BUILD, start=SERVE_OUT, port=free_port())
        status = await start(running, body)
        sid = status["sandboxId"]
        workdir = provider_workdir(running, emulator, sid)
        update = {
            "files": [
                {"path": "page.html", "content": "<p>second</p>"},
                {"path": "build.sh", "content": HELD},
            ]
        }
        task = asyncio.create_task(put_source(running, sid, update))
        staged = workdir / ".midori-next"
        await eventually(lambda: (staged / "started").exists(), within=60, what="the rebuild")
        # The build runs in the staging copy: the preview still serves the first version.
        assert "first" in (await fetch_preview(running, status)).text
        assert (workdir / "page.html").read_text() == "<p>first</p>"
        (staged / "release").write_text("")
        res = await task
        assert res.status_code == 200 and res.json()["rebuilt"], res.text
        assert "second" in (await fetch_preview(running, status)).text
        assert not staged.exists()


async def test_updates_on_the_embedded_backend_too(tmp_path: Path, backend: Backend) -> None:
    async with provider_app(tmp_path, backend, "local") as (running, _):
        status = await start(running, {"projectId": "cafe", "promptJson": cafe_prompt()})
        sid = status["sandboxId"]
        for n, name in enumerate(["Two", "Three"], start=2):
            res = await put_source(running, sid, {"promptJson": renamed(name)})
            assert res.status_code == 200 and res.json()["version"] == n, res.text
            assert name in (await fetch_preview(running, status)).text
        same = await put_source(running, sid, {"promptJson": renamed("Three")})
        assert same.json() | {"updatedAt": None} == {
            "sandboxId": sid, "version": 3, "updatedAt": None, "changed": False,
            "superseded": False, "uploaded": [], "deleted": [], "rebuilt": False,
        }  # fmt: skip


@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_preview_stopped_during_its_update_answers_410(
    kind: str, tmp_path: Path, pg_backend: Backend
) -> None:
    async with provider_app(tmp_path, pg_backend, kind) as (running, emulator):
        body = files_body(
            "held", built_site("<p>first</p>"), build=BUILD, start=SERVE_OUT, port=free_port()
        )
        status = await start(running, body)
        sid = status["sandboxId"]
        staged = provider_workdir(running, emulator, sid) / ".midori-next"
        update = {"files": [{"path": "build.sh", "content": HELD}]}
        task = asyncio.create_task(put_source(running, sid, update))
        await eventually(lambda: (staged / "started").exists(), within=60, what="the rebuild")
        assert (await stop(running, sid)).status_code == 200
        res = await task
        assert res.status_code == 410, res.text
        assert res.json()["error"] | {"message": ""} == {
            "code": "sandbox_stopped", "message": "", "sandboxId": sid, "reason": "user",
        }  # fmt: skip


@pytest.fixture(scope="session")
def npm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("npm-cache-update")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", PROVIDERS)
async def test_a_node_projects_rebuild_links_its_dependencies_instead_of_copying_them(
    kind: str, tmp_path: Path, pg_backend: Backend, npm_cache: Path
) -> None:
    """The vite template as `files` with `npm ci` and `vite build`: a changed source file is
    rebuilt in the staging copy against the served node_modules (linked, not copied)."""
    (tmp_path / "data" / "cache").mkdir(parents=True)
    (tmp_path / "data" / "cache" / "npm").symlink_to(npm_cache)
    install = "npm ci --no-audit --no-fund --prefer-offline"
    if kind == "daytona":
        install += f" --cache {npm_cache}"
    built = render_template("vite", cafe_prompt())
    files = {f.path: f.content for f in built.files}
    body = files_body(
        "vite-files", files, install=install, build="npm run build",
        start='exec python3 -m http.server "$PORT" --bind 127.0.0.1 --directory dist',
        port=free_port(),
    )  # fmt: skip
    async with provider_app(tmp_path, pg_backend, kind, build_step_timeout_seconds=400) as (
        running,
        emulator,
    ):
        status = await start(running, body)
        sid = status["sandboxId"]
        workdir = provider_workdir(running, emulator, sid)
        page = files["index.html"].decode().replace("<body>", "<body><p>rebuilt-marker</p>", 1)
        assert "rebuilt-marker" in page
        res = await put_source(running, sid, {"files": [{"path": "index.html", "content": page}]})
        assert res.status_code == 200, res.text
        assert res.json()["rebuilt"] and res.json()["version"] == 2
        assert "rebuilt-marker" in (await fetch_preview(running, status)).text
        modules = workdir / "node_modules"
        assert modules.is_dir() and not modules.is_symlink()
        assert (modules / ".bin" / "vite").exists()
        assert not (workdir / ".midori-next").exists()
