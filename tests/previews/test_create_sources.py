"""Each kind of source goes from POST to a page served through the preview proxy: a promptJson
rendered by the `static` and `vite` templates, uploaded `files` with a custom start command,
a `git` repository by branch and by commit, and binary files byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.previews.helpers import (
    CAFE_NAME,
    cafe_prompt,
    create,
    create_running,
    fetch_preview,
    files_body,
    git,
    make_png,
    read_events,
    stop,
)

SERVER_PY = """\
import http.server
import os
from pathlib import Path


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        built = Path("built.txt").read_text().strip()
        body = f"custom server path={self.path} built={built}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Served-By", "server.py")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


async def test_static_template_serves_the_site_name(service_app: Running) -> None:
    res = await create(
        service_app, {"projectId": "demo-cafe", "promptJson": cafe_prompt(), "template": "static"}
    )
    assert res.status_code == 202, res.text
    created = res.json()
    assert created["status"] == "requested"
    assert res.headers["location"] == created["statusUrl"]

    status = await service_app.wait_until(created["sandboxId"], "running")
    assert re.fullmatch(
        rf"http://3000-{created['sandboxId']}\.preview\.localhost:\d+/", status["previewUrl"]
    )
    assert status["previewToken"]
    assert status["readyAt"] is not None

    page = await fetch_preview(service_app, status)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert CAFE_NAME.encode("utf-8") in page.content  # Thai, byte for byte
    css = await fetch_preview(service_app, status, "/styles.css")
    assert css.status_code == 200


async def test_vite_template_builds_with_npm_and_serves_the_site(tmp_path: Path) -> None:
    """A real `npm ci` + `vite build`; the built page reads prompt.json at run time."""
    settings = make_settings(
        tmp_path, Backend("embedded", None, None), build_step_timeout_seconds=300
    )
    async with running_app(settings) as app:
        res = await create(
            app, {"projectId": "demo-cafe", "promptJson": cafe_prompt(), "template": "vite"}
        )
        assert res.status_code == 202, res.text
        status = await app.wait_until(res.json()["sandboxId"])
        assert status["status"] == "running", status

        page = await fetch_preview(app, status)
        assert page.status_code == 200
        # The built index, not the source one: Vite rewrote the entry to a hashed bundle.
        assert "/src/main.js" not in page.text
        bundle = re.search(r'src="\.?(/assets/[^"]+\.js)"', page.text)
        assert bundle, page.text
        js = await fetch_preview(app, status, bundle.group(1))
        assert js.status_code == 200
        assert "javascript" in js.headers["content-type"]

        data = await fetch_preview(app, status, "/prompt.json")
        assert data.status_code == 200
        assert CAFE_NAME.encode("utf-8") in data.content
        assert data.json()["name"] == CAFE_NAME
        await stop(app, status["sandboxId"])

        # The build does not depend on the promptJson: the next vite preview reuses it (no npm),
        # with its own prompt.json on top; the first one's data is not in the cache.
        cached = list((settings.data_dir / "cache" / "builds").glob("vite-*.tar.gz"))
        assert len(cached) == 1
        other = {**cafe_prompt(), "name": "ร้านที่สอง Second shop"}
        res = await create(app, {"projectId": "second", "promptJson": other, "template": "vite"})
        second = await app.wait_until(res.json()["sandboxId"], "running")
        assert (await fetch_preview(app, second)).text == page.text  # the same built index
        assert (await fetch_preview(app, second, "/prompt.json")).json()["name"] == other["name"]
        assert (await fetch_preview(app, second, bundle.group(1))).content == js.content
        await stop(app, second["sandboxId"])  # the event stream ends with the sandbox
        steps = [e.data["status"] for e in await read_events(app, second["sandboxId"])
                 if e.event == "status"]  # fmt: skip
        assert "installing" not in steps and "building" not in steps, steps


async def test_files_with_build_and_custom_start_command(service_app: Running) -> None:
    body = files_body(
        "custom",
        {"server.py": SERVER_PY},
        build="echo from-build-step > built.txt",
        start="python3 server.py",
        port=8080,
    )
    status = await create_running(service_app, body)
    assert status["previewUrl"].startswith(f"http://8080-{status['sandboxId']}.")

    res = await fetch_preview(service_app, status, "/hello?x=1")
    assert res.status_code == 200
    assert res.headers["x-served-by"] == "server.py"
    assert res.text == "custom server path=/hello?x=1 built=from-build-step"


async def test_binary_file_is_served_byte_exact(service_app: Running) -> None:
    png = make_png()
    thai = "<h1>บ้านกาแฟ</h1>\r\n<img src=img/logo.png>"
    status = await create_running(
        service_app, files_body("binary", {"index.html": thai, "img/logo.png": png})
    )

    res = await fetch_preview(service_app, status, "/img/logo.png")
    assert res.status_code == 200
    assert res.headers["content-type"] == "image/png"
    assert res.content == png
    page = await fetch_preview(service_app, status, "/index.html")
    assert page.content == thai.encode("utf-8")


@pytest.fixture
def repo(tmp_path: Path) -> dict[str, str]:
    """A bare repository under tmp_path: `main` at v2, `feature` on its own commit, and the sha
    of v1 (reachable only from main's history)."""
    bare = tmp_path / "remote" / "site.git"
    bare.mkdir(parents=True)
    git(bare, "init", "--quiet", "--bare", "-b", "main")
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "-b", "main")
    git(work, "remote", "add", "origin", str(bare))
    (work / "index.html").write_text("<h1>version one</h1>")
    git(work, "add", "index.html")
    git(work, "commit", "--quiet", "-m", "v1")
    v1 = git(work, "rev-parse", "HEAD")
    (work / "index.html").write_text("<h1>version two</h1>")
    git(work, "commit", "--quiet", "-am", "v2")
    git(work, "checkout", "--quiet", "-b", "feature")
    (work / "index.html").write_text("<h1>feature page</h1>")
    git(work, "commit", "--quiet", "-am", "feature")
    git(work, "push", "--quiet", "origin", "main", "feature")
    return {"url": f"file://{bare}", "v1": v1}


@pytest.mark.parametrize(
    ("ref", "expected"),
    [("feature", "feature page"), ("v1", "version one"), (None, "version two")],
    ids=["branch", "sha", "default-branch"],
)
async def test_git_source_by_ref(
    service_app: Running, repo: dict[str, str], ref: str | None, expected: str
) -> None:
    git_ref = repo["v1"] if ref == "v1" else ref
    source: dict[str, str] = {"url": repo["url"]}
    if git_ref is not None:
        source["ref"] = git_ref
    status = await create_running(service_app, {"projectId": "from-git", "git": source})

    res = await fetch_preview(service_app, status)
    assert res.status_code == 200
    assert expected in res.text
    assert (await stop(service_app, status["sandboxId"])).json()["status"] == "stopped"


async def test_an_unusable_preview_json_fails_the_build_with_its_reason(
    service_app: Running, repo: dict[str, str], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    git(work, "checkout", "--quiet", "-b", "broken")
    (work / "preview.json").write_text("[1, 2, 3]")
    git(work, "add", "preview.json")
    git(work, "commit", "--quiet", "-m", "not an object")
    git(work, "push", "--quiet", "origin", "broken")

    res = await service_app.client.post(
        "/api/preview/daytona",
        json={"projectId": "broken", "git": {"url": repo["url"], "ref": "broken"}},
        headers=user_headers(),
    )
    status = await service_app.wait_until(res.json()["sandboxId"], "error")
    assert status["error"]["step"] == "detect"
    assert status["error"]["code"] == "invalid_preview_json"
    assert "preview.json" in status["error"]["message"]
