"""POST /api/github/repos from a running preview on Daytona (the real SDK against the emulator):
the repository holds the project's files at its root, read back from the sandbox's workdir
through a handle the provider itself attaches, not from wherever a session starts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, running_app, user_headers
from tests.github.conftest import Origin, gh_settings
from tests.github.fake_github import FakeGitHub
from tests.github.test_repos import REPOS, blob, branch_files
from tests.previews.helpers import create_running, files_body
from tests.providers.test_daytona_provider import make_config
from tests.support.clock import ManualClock
from tests.support.daytona import DaytonaEmulator
from tests.support.servers import free_port


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaytonaEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with DaytonaEmulator() as emu:
        yield emu


async def test_repo_from_a_running_daytona_preview(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin, emulator: DaytonaEmulator
) -> None:
    settings = gh_settings(tmp_path, Backend("embedded", None, None), fake_github, origin)
    provider = DaytonaProvider(make_config(emulator, deployment=settings.preview_deployment))
    files = {"index.html": "<h1>on daytona</h1>", "css/site.css": "h1{}", "img/a.bin": b"\x00\xff"}
    try:
        async with running_app(settings, clock=ManualClock(), provider=provider) as running:
            body = files_body("dt-site", files, port=free_port())
            status = await create_running(running, body)
            res = await running.client.post(
                REPOS,
                json={"sandboxId": status["sandboxId"], "name": "dt-site", "org": "octo-org"},
                headers=user_headers("alice"),
            )
            assert res.status_code == 201, res.text
    finally:
        await provider.aclose()
    bare = origin.root / "octo-org" / "dt-site.git"
    assert sorted(branch_files(bare)) == ["README.md", "css/site.css", "img/a.bin", "index.html"]
    assert blob(bare, "preview:img/a.bin") == b"\x00\xff"
