"""POST /api/github/repos: a repository (user's or org's) holding the project's files and a README
on branch `preview` — from a rendered promptJson, from a running preview's files — and the token
that pushes it: sent to the git server as HTTP auth, yet in no log line, no process argument and
no git config."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from midori_preview.github import gitpush
from tests.conftest import Backend, user_headers
from tests.github.conftest import Origin, gh_app, gh_settings
from tests.github.fake_github import USER_LOGIN, FakeGitHub
from tests.previews.helpers import cafe_prompt, create_running, files_body, git

REPOS = "/api/github/repos"


def branch_files(bare: Path, branch: str = "preview") -> dict[str, str]:
    """Files of `branch` in a bare repository (binary ones as latin-1 text)."""
    names = git(bare, "ls-tree", "-r", "--name-only", branch).splitlines()
    return {n: blob(bare, f"{branch}:{n}").decode("latin-1") for n in names}


def blob(bare: Path, spec: str) -> bytes:
    return subprocess.run(["git", "show", spec], cwd=bare, capture_output=True, check=True).stdout


async def test_repo_from_a_rendered_project(
    tmp_path: Path, pg_backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    async with gh_app(gh_settings(tmp_path, pg_backend, fake_github, origin)) as running:
        res = await running.client.post(
            REPOS,
            json={"projectId": "demo-cafe", "promptJson": cafe_prompt(), "name": "cafe-site"},
            headers=user_headers("alice"),
        )
        assert res.status_code == 201, res.text
        body = res.json()
        assert body["fullName"] == f"{USER_LOGIN}/cafe-site"
        assert body["repoUrl"] == f"https://github.example/{USER_LOGIN}/cafe-site"
        assert (body["branch"], body["private"]) == ("preview", True)
        [create] = fake_github.calls_to("POST", r"^/user/repos$")
        assert create.json["private"] is True and create.json["name"] == "cafe-site"
        files = branch_files(origin.root / USER_LOGIN / "cafe-site.git")
        assert "index.html" in files and "Baan Kafae" in files["index.html"]
        assert "README.md" in files and "demo-cafe" in files["README.md"]
        sha = git(origin.root / USER_LOGIN / "cafe-site.git", "rev-parse", "preview")
        assert body["commitSha"] == sha
        # Same name again: GitHub's 422 becomes our 409, without GitHub's text.
        again = await running.client.post(
            REPOS,
            json={"projectId": "demo-cafe", "promptJson": cafe_prompt(), "name": "cafe-site"},
            headers=user_headers("alice"),
        )
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "repo_create_rejected"
        assert "already exists on this account" not in again.text


async def test_repo_from_a_running_preview(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        status = await create_running(
            running,
            files_body(
                "my-site",
                {
                    "index.html": "<h1>mine</h1>",
                    "css/site.css": "h1{color:red}",
                    "img/dot.bin": bytes(range(256)),
                },
            ),
        )
        sandbox_id = status["sandboxId"]
        other = await running.client.post(
            REPOS, json={"sandboxId": sandbox_id, "name": "x"}, headers=user_headers("mallory")
        )
        assert other.status_code == 404  # not yours
        res = await running.client.post(
            REPOS,
            json={"sandboxId": sandbox_id, "name": "my-site", "org": "octo-org", "private": False},
            headers=user_headers("alice"),
        )
        assert res.status_code == 201, res.text
        assert res.json()["fullName"] == "octo-org/my-site"
        bare = origin.root / "octo-org" / "my-site.git"
        files = branch_files(bare)
        assert sorted(files) == ["README.md", "css/site.css", "img/dot.bin", "index.html"]
        assert blob(bare, "preview:img/dot.bin") == bytes(
            range(256)
        )  # byte-exact through the provider read-back
        # projectId alone: the caller's newest running preview of that project.
        res = await running.client.post(
            REPOS, json={"projectId": "my-site", "name": "my-site-2"}, headers=user_headers("alice")
        )
        assert res.status_code == 201, res.text
        await running.client.post(
            "/api/preview/daytona/stop", json={"sandboxId": sandbox_id}, headers=user_headers()
        )
        stopped = await running.client.post(
            REPOS, json={"sandboxId": sandbox_id, "name": "late"}, headers=user_headers("alice")
        )
        assert stopped.status_code == 409


async def test_repo_route_needs_a_user_and_a_configured_github(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    body = {"projectId": "p", "files": [{"path": "index.html", "content": "x"}], "name": "p"}
    backend = Backend("embedded", None, None)
    settings = gh_settings(tmp_path, backend, fake_github, origin, github_token=None)
    async with gh_app(settings) as running:
        assert (await running.client.post(REPOS, json=body)).status_code == 401
        res = await running.client.post(REPOS, json=body, headers=user_headers())
        assert res.status_code == 503 and res.json()["error"]["code"] == "github_not_configured"
        for bad in [
            {**body, "name": "-rf"},
            {**body, "name": "x.git"},
            {**body, "name": "a/b"},
            {**body, "org": "../evil"},
            {**body, "sandboxId": "abc"},
            {"name": "p"},
            {**body, "files": [{"path": "../etc/passwd", "content": "x"}]},
        ]:
            res = await running.client.post(REPOS, json=bad, headers=user_headers())
            assert res.status_code == 422, bad
    assert fake_github.calls == []


# --- the token ----------------------------------------------------------------------------------


class GitServer:
    """`git http-backend` behind HTTP Basic auth (the way GitHub takes a token over https)."""

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
        self.seen: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.handle_git()

            def do_POST(self) -> None:
                self.handle_git()

            def handle_git(self) -> None:
                auth = self.headers.get("Authorization")
                server.seen.append(auth)
                if auth != server.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.read_body()
                path, _, query = self.path.partition("?")
                env = {
                    "PATH": "/usr/bin:/bin",
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "GIT_CONFIG_NOSYSTEM": "1",
                    "HOME": str(server.root),
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "REQUEST_METHOD": self.command,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "x-access-token",
                    "REMOTE_ADDR": "127.0.0.1",
                }
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                out = subprocess.run(
                    ["/usr/lib/git-core/git-http-backend"],
                    input=body,
                    env=env,
                    capture_output=True,
                    check=False,
                ).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                if not _:
                    head, _, payload = out.partition(b"\n\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode().splitlines():
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    data = b""
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class ArgvWatch:
    """Every process's command line, sampled every millisecond while active."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if self.needle in cmdline:
                    self.hits.append(cmdline.decode("utf-8", "replace"))
            self.samples += 1
            time.sleep(0.001)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def recording_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run the service's git through a wrapper that records each argv and, after each command,
    the repository's .git/config."""
    log = tmp_path / "git-record.log"
    wrapper = tmp_path / "git-wrapper.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'printf "ARGV %s\\n" "$*" >> {log}\n'
        '/usr/bin/git "$@"\nrc=$?\n'
        f'if [ -f .git/config ]; then echo "CONFIG" >> {log}; cat .git/config >> {log}; fi\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    monkeypatch.setattr(gitpush, "GIT", str(wrapper))
    yield log


async def test_push_token_reaches_git_only_through_its_environment(
    tmp_path: Path,
    fake_github: FakeGitHub,
    origin: Origin,
    recording_git: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    token = fake_github.token
    server = GitServer(origin.root, token)
    try:
        settings = gh_settings(
            tmp_path,
            Backend("embedded", None, None),
            fake_github,
            origin,
            github_clone_base_url=server.url,
            log_level="DEBUG",
        )
        body = {
            "projectId": "secret-site",
            "files": [{"path": "index.html", "content": "<h1>s"}],
            "name": "secret-site",
            "org": "octo-org",
        }
        async with gh_app(settings) as running:
            with ArgvWatch(token) as watch:
                res = await running.client.post(REPOS, json=body, headers=user_headers())
            assert res.status_code == 201, res.text
            # The wrong token is refused by the server and the error says nothing of it.
            fake_github.repos.clear()
            (origin.root / "octo-org" / "secret-site.git").rename(tmp_path / "first.git")
            monkey = server.expected
            server.expected = "Basic nope"
            failed = await running.client.post(REPOS, json=body, headers=user_headers())
            server.expected = monkey
            assert failed.status_code == 502
            assert failed.json()["error"]["code"] == "repo_push_failed"
            assert token not in failed.text
        out, err = capfd.readouterr()
    finally:
        server.close()

    # It really was sent, as HTTP auth: the push landed.
    assert server.seen.count(server.expected) >= 1
    files = branch_files(tmp_path / "first.git")
    assert files["index.html"] == "<h1>s"
    # ... and is nowhere else.
    record = recording_git.read_text()
    assert "ARGV" in record and "push" in record and "CONFIG" in record
    assert token not in record  # no argv, no .git/config
    assert "github.repo_pushed" in err  # the logs were captured (DEBUG)
    assert token not in out and token not in err
    assert watch.samples > 0 and watch.hits == []  # no process argument, ever
    assert not list((settings.data_dir / "tmp").iterdir())  # askpass and work tree removed
    assert token not in (tmp_path / "first.git" / "config").read_text()
