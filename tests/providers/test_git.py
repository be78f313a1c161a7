"""Git on the host, the one way: credentials reach the git server as HTTP auth (username and
password as given) and nowhere else — no argv, no config or file left behind, no error text,
no sandbox command's environment; a git past its time limit is killed with its helpers; the
local provider's clone goes through it."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from midori_preview.providers.base import (
    CommandTimeout,
    GitCredentials,
    ProviderError,
    SandboxSpec,
)
from midori_preview.providers.git import Git, GitFailed, GitTimeout
from tests.github.test_repos import ArgvWatch, GitServer
from tests.previews.helpers import git, pids_with_marker
from tests.providers.test_local_provider import make_provider

PASSWORD = "s3cret-pa55word-for-the-test"


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitServer]:
    """An HTTP git server with one repository, `site.git`, taking only alice-user's password."""
    root = tmp_path / "served"
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "index.html").write_text("<h1>served</h1>")
    git(work, "add", "-A")
    git(work, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    root.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "site.git")], check=True)
    served = GitServer(root, "unused")
    served.expected = basic("alice-user", PASSWORD)
    try:
        yield served
    finally:
        served.close()


def leftovers(*roots: Path) -> list[Path]:
    """Files under `roots` that hold the password."""
    return [
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and PASSWORD.encode() in path.read_bytes()
    ]


async def test_credentials_go_to_the_server_and_nowhere_else(
    tmp_path: Path, server: GitServer
) -> None:
    home, dest = tmp_path / "home", tmp_path / "clone"
    dest.mkdir()
    credentials = GitCredentials("alice-user", PASSWORD)
    with ArgvWatch(PASSWORD) as watch, Git(home=home, timeout=30, credentials=credentials) as g:
        await g.run("clone", "-q", "--", f"{server.url}/site.git", ".", cwd=dest)
    assert (dest / "index.html").read_text() == "<h1>served</h1>"
    assert server.expected in server.seen  # sent, as HTTP auth
    assert watch.samples > 0 and watch.hits == []  # in no process's argv, ever
    assert leftovers(home, dest) == []  # not in .git/config, and the askpass script is gone
    assert list(home.iterdir()) == []


async def test_a_failure_says_what_failed_without_the_password(
    tmp_path: Path, server: GitServer
) -> None:
    dest = tmp_path / "clone"
    dest.mkdir()
    wrong = GitCredentials("bob", PASSWORD)  # the right password with the wrong username
    with (
        Git(home=tmp_path / "home", timeout=30, credentials=wrong) as g,
        pytest.raises(GitFailed) as caught,
    ):
        await g.run("clone", "-q", "--", f"{server.url}/site.git", ".", cwd=dest)
    assert caught.value.step == "clone" and caught.value.exit_code not in (None, 0)
    assert PASSWORD not in str(caught.value) and caught.value.detail
    assert basic("bob", PASSWORD) in server.seen  # the username was the one given


async def test_git_never_reads_the_services_config_or_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'user.name'='from-the-service'")
    monkeypatch.setenv("SERVICE_SECRET", "do-not-pass")
    g = Git(home=tmp_path / "home", timeout=30)
    env = g.environment()
    assert "SERVICE_SECRET" not in env and "GIT_CONFIG_PARAMETERS" not in env
    assert env["GIT_TERMINAL_PROMPT"] == "0" and env["GIT_CONFIG_NOSYSTEM"] == "1"
    (tmp_path / "repo").mkdir()
    await g.run("init", "-q", cwd=tmp_path / "repo")
    shown = await g.run("config", "--show-origin", "--list", cwd=tmp_path / "repo")
    assert "from-the-service" not in shown
    origins = {line.split("\t")[0] for line in shown.splitlines()}
    assert origins == {"file:.git/config", "command line:"}, shown
    assert "command line:\tcredential.helper=" in shown.splitlines()


async def test_a_git_past_its_time_limit_is_killed_with_its_helpers(tmp_path: Path) -> None:
    # A server that accepts connections and never answers.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    url = f"http://127.0.0.1:{port}/never-{port}.git"
    dest = tmp_path / "clone"
    dest.mkdir()
    try:
        with Git(home=tmp_path / "home", timeout=1) as g, pytest.raises(GitTimeout) as caught:
            await g.run("clone", "-q", "--", url, ".", cwd=dest)
        assert caught.value.step == "clone"
        assert pids_with_marker(f"never-{port}") == []  # git and git-remote-http both gone
    finally:
        silent.close()


async def test_a_cancelled_git_is_killed_too(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    marker = f"cancelled-{port}"
    dest = tmp_path / "clone"
    dest.mkdir()
    try:
        with Git(home=tmp_path / "home", timeout=60) as g:
            run = asyncio.create_task(
                g.run("clone", "-q", "--", f"http://127.0.0.1:{port}/{marker}.git", ".", cwd=dest)
            )
            async with asyncio.timeout(30):
                while not pids_with_marker(marker):
                    await asyncio.sleep(0.02)
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        assert pids_with_marker(marker) == []
    finally:
        silent.close()


# --- the local provider's clone ---------------------------------------------------------------


async def test_the_local_clone_honours_the_username_and_keeps_the_password_out(
    tmp_path: Path, server: GitServer
) -> None:
    provider = make_provider(tmp_path / "sandboxes", "auto")
    try:
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        url = f"{server.url}/site.git"
        with pytest.raises(ProviderError) as caught:
            await provider.clone(
                sandbox, url, None, timeout=30, credentials=GitCredentials("bob", PASSWORD)
            )
        assert PASSWORD not in caught.value.message
        await provider.clone(
            sandbox, url, None, timeout=30, credentials=GitCredentials("alice-user", PASSWORD)
        )
        assert server.seen[-1] == server.expected
        env = await provider.exec(sandbox, "cat index.html; echo; env", timeout=30)
        assert env.output_tail[0] == "<h1>served</h1>"
        assert not any(PASSWORD in line for line in env.output_tail)
        assert leftovers(tmp_path / "sandboxes") == []
    finally:
        await provider.aclose()


async def test_the_local_clone_times_out_as_a_command_timeout(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    provider = make_provider(tmp_path / "sandboxes", "auto")
    try:
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/repo.git"
        with pytest.raises(CommandTimeout):
            await provider.clone(sandbox, url, None, timeout=1)
    finally:
        silent.close()
        await provider.aclose()
