"""Symlinks planted in a git source: a repository whose committed files are links to the
service's secrets (its `.env`, its process environment, the host's /etc/shadow), to a host
directory outside the workspace, and to `/`. Cloned, served, watched by the disk limit and
deleted, nothing of the host is reached: inside the bubblewrap sandbox the links resolve in the
sandbox's own file system (no service files, /etc/shadow hidden, its own /proc); the disk limit's
walk does not follow them; deleting the workspace deletes the links, not what they point to."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import pytest

import midori_preview.providers.local.provider as local_provider
from tests.conftest import Backend, make_settings, running_app
from tests.previews.helpers import create_running, fetch_preview, git, stop, workspace_of
from tests.support.waiting import eventually

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def planted_repo(tmp_path: Path, links: dict[str, str]) -> str:
    """A bare repository whose one commit holds index.html and the symlinks `links`."""
    bare, work = tmp_path / "remote" / "site.git", tmp_path / "work"
    bare.mkdir(parents=True)
    work.mkdir()
    git(bare, "init", "--quiet", "--bare", "-b", "main")
    git(work, "init", "--quiet", "-b", "main")
    (work / "index.html").write_text("<h1>planted</h1>")
    for name, target in links.items():
        (work / name).symlink_to(target)
    git(work, "add", "-A")
    git(work, "commit", "--quiet", "-m", "links")
    git(work, "remote", "add", "origin", str(bare))
    git(work, "push", "--quiet", "origin", "main")
    return f"file://{bare}"


async def test_symlinks_in_a_git_source_reach_nothing_of_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = f"git-link-sentinel-{secrets.token_hex(8)}"
    monkeypatch.setenv("MIDORI_LINK_SENTINEL", sentinel)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text(sentinel)
    settings = make_settings(
        tmp_path, Backend("embedded", None, None),
        local_sandbox_disk_mb=5, local_sandbox_watch_seconds=0.2,
    )  # fmt: skip
    data = settings.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    (data / ".env").write_text(f"AUTH_JWT_SECRET={sentinel}\n")
    links = {
        "env.txt": str(data / ".env"),
        "environ.txt": f"/proc/{os.getpid()}/environ",
        "shadow.txt": "/etc/shadow",
        "outside": str(outside),
        "up": "../..",
        "root": "/",
    }
    url = planted_repo(tmp_path, links)
    walks: list[Path] = []  # the disk limit's walks (the real one runs: counted only)
    real_walk = local_provider.disk_usage

    def counted_walk(path: Path) -> int:
        walks.append(path)
        return real_walk(path)

    monkeypatch.setattr(local_provider, "disk_usage", counted_walk)
    async with running_app(settings) as app:
        status = await create_running(app, {"projectId": "links", "git": {"url": url}})
        sandbox_id = status["sandboxId"]
        assert (await fetch_preview(app, status)).text == "<h1>planted</h1>"  # it serves
        served = {}
        for path in ["/env.txt", "/environ.txt", "/shadow.txt", "/outside/keep.txt", "/up/"]:
            res = await fetch_preview(app, status, path)
            assert res.status_code < 500, (path, res.status_code)
            served[path] = res.text
        assert [p for p, text in served.items() if sentinel in text] == [], served
        assert "root:" not in served["/shadow.txt"]  # /etc/shadow is /dev/null in a sandbox
        # The disk limit's walk (every 0.2 s, 5 MB) does not follow `root` or `up` into the
        # host's file system: a second of checks later the preview still runs.
        workspace = workspace_of(app, sandbox_id)
        assert (workspace / "work" / "root").is_symlink()
        start = len(walks)

        async def five_more_walks() -> bool:
            return sum(1 for p in walks[start:] if Path(p).name == sandbox_id) >= 5

        await eventually(five_more_walks, within=30, what="five more walks of its workspace")
        after = (await app.client.get(f"/api/preview/daytona/{sandbox_id}", headers={
            "X-User-Id": "alice"})).json()  # fmt: skip
        assert after["status"] == "running", after
        assert (await stop(app, sandbox_id)).json()["status"] == "stopped"
        assert not workspace.exists()
    # Deleting the workspace deleted the links, not what they point to.
    assert (outside / "keep.txt").read_text() == sentinel
    assert (data / ".env").read_text() == f"AUTH_JWT_SECRET={sentinel}\n"
