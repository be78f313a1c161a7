"""A private repository's pull request builds (issue 11 §1): the fake's git endpoint demands
credentials like github.com; the service clones with GITHUB_TOKEN (or a per-repository App
installation token) handed to git as HTTP credentials — and the token (a sentinel value) is in
no log line, response, process argv or environment, `.git/config`, or file the sandbox keeps.
On both providers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, running_app
from tests.github.conftest import (
    APP_ID,
    Origin,
    app_keys,
    app_settings,
    deliver,
    gh_app,
    gh_settings,
    pr_payload,
    sandboxes,
    settle,
    site,
)
from tests.github.fake_github import FakeGitHub, serve_fake
from tests.github.test_repos import ArgvWatch
from tests.providers.test_daytona_provider import make_config
from tests.support.clock import ManualClock
from tests.support.daytona import DaytonaEmulator

REPO = "octo-org/secret-site"
SENTINEL = "ghp_SENTINEL0token0never0seen0anywhere0x1"


def files_holding(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


def environments_holding(needle: bytes) -> list[str]:
    hits = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes():
                    hits.append(entry)
            except OSError:
                continue
    return hits


def comment_states(fake: FakeGitHub) -> list[str]:
    [comment] = fake.comments_on(REPO, 7)
    return ["ready" if "is ready" in b else "failed" if "failed" in b else "building"
            for b in comment["history"]]  # fmt: skip


@pytest.fixture
async def private_github(origin: Origin) -> FakeGitHub:
    fake = FakeGitHub(token=SENTINEL, git_root=origin.root)
    fake.private_repos.add(REPO)
    return fake


async def test_private_repo_builds_with_the_token_and_it_leaks_nowhere(
    tmp_path: Path, origin: Origin, private_github: FakeGitHub, capfd: pytest.CaptureFixture[str]
) -> None:
    sha = origin.make(REPO, site("private site"))[0]
    async with serve_fake(private_github) as fake:
        settings = gh_settings(
            tmp_path, Backend("embedded", None, None), fake, origin, log_level="DEBUG"
        )
        async with gh_app(settings) as running:
            with ArgvWatch(SENTINEL) as watch:
                res = await deliver(
                    running.client, "pull_request", pr_payload("opened", sha, repo=REPO)
                )
                await settle(running)
            assert SENTINEL not in res.text
            assert comment_states(fake) == ["building", "ready"]
            [row] = await sandboxes(running)
            assert row.status == "running"
            status = await running.client.get(
                f"/api/sandboxes/{row.id}", headers={"X-User-Id": "github"}
            )
            assert SENTINEL not in status.text
            assert environments_holding(SENTINEL.encode()) == []
        out, err = capfd.readouterr()
    # The clone really authenticated (the endpoint refuses anyone else) ...
    assert (REPO, "x-access-token", SENTINEL) in fake.git.seen if fake.git else False
    # ... and the token is nowhere else.
    assert "github.build_started" in err
    assert SENTINEL not in out and SENTINEL not in err
    assert watch.samples > 0 and watch.hits == []
    assert files_holding(settings.data_dir, SENTINEL.encode()) == []
    assert all(SENTINEL not in c["body"] for c in fake.comments.values())


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[DaytonaEmulator]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with DaytonaEmulator() as emu:
        yield emu


async def test_private_repo_on_daytona(
    tmp_path: Path,
    origin: Origin,
    private_github: FakeGitHub,
    emulator: DaytonaEmulator,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sha = origin.make(REPO, site("private on daytona"))[0]
    async with serve_fake(private_github) as fake:
        settings = gh_settings(tmp_path, Backend("embedded", None, None), fake, origin)
        provider = DaytonaProvider(make_config(emulator, deployment=settings.preview_deployment))
        try:
            async with running_app(settings, clock=ManualClock(), provider=provider) as running:
                try:
                    await deliver(
                        running.client, "pull_request", pr_payload("opened", sha, repo=REPO)
                    )
                    await settle(running)
                    assert comment_states(fake) == ["building", "ready"]
                    assert environments_holding(SENTINEL.encode()) == []
                finally:
                    await running.services.github.aclose()
        finally:
            await provider.aclose()
        out, err = capfd.readouterr()
    [clone] = emulator.git_clones
    assert (clone.username, clone.password) == ("x-access-token", SENTINEL)  # as credentials
    assert SENTINEL not in clone.url
    assert SENTINEL not in out and SENTINEL not in err
    assert files_holding(settings.data_dir, SENTINEL.encode()) == []


async def test_app_clones_with_a_token_scoped_to_the_repository(
    tmp_path: Path, origin: Origin
) -> None:
    pem, public = app_keys()
    sha = origin.make(REPO, site("app private"))[0]
    fake = FakeGitHub(git_root=origin.root, app_id=APP_ID, app_public_key=public)
    fake.private_repos.add(REPO)
    async with serve_fake(fake):
        settings = app_settings(tmp_path, fake, origin, pem)
        async with gh_app(settings) as running:
            await deliver(running.client, "pull_request", pr_payload("opened", sha, repo=REPO))
            await settle(running)
        assert comment_states(fake) == ["building", "ready"]
    assert fake.git is not None
    [used] = {p for r, _, p in fake.git.seen if r == REPO and p}
    assert fake.token_scopes[used] == (["secret-site"], {"contents": "read"})
