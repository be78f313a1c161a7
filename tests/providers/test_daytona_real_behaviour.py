"""The Daytona provider against Daytona as its server really behaves (see DAYTONA.md's table):
error bodies and states, 409 on deletes mid-transition, 307/400 from the preview proxy,
`Retry-After-<throttler>`, quota as a 400, single-branch clones, stdin that never ends, servers
that exit, listings that lag. Each test names the behaviour it proves."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from midori_preview.providers.base import (
    FileData,
    GitCredentials,
    ProviderError,
    ProviderQuota,
    ProviderSandbox,
    ProviderTimeout,
    ServerExited,
)
from midori_preview.providers.daytona import DaytonaProvider
from tests.github.test_repos import GitServer
from tests.previews.helpers import git
from tests.providers.test_daytona_provider import make_config, provider, spec
from tests.providers.test_git import PASSWORD, basic
from tests.support.daytona import CREATE, DELETE, PREVIEW_URL, DaytonaEmulator
from tests.support.servers import free_port
from tests.support.waiting import eventually

__all__ = ["provider"]  # the provider fixture, shared with test_daytona_provider


def api(emulator: DaytonaEmulator, method: str, path: str) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(
        f"{emulator.api_url}{path}",
        method=method,
        headers={"Authorization": f"Bearer {emulator.api_key}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


async def with_workdir(provider: DaytonaProvider) -> ProviderSandbox:
    """A new sandbox with a file in its workdir (the workdir exists once something is there)."""
    created = await provider.create(spec(), timeout=30)
    await provider.upload(created, [FileData("index.html", b"<h1>hello</h1>")])
    return created


# --- the emulator is Daytona ---------------------------------------------------------------------


def test_api_errors_have_daytonas_body(emulator: DaytonaEmulator) -> None:
    status, body = api(emulator, "GET", "/sandbox/no-such-sandbox")
    assert status == 404
    assert set(body) == {"path", "timestamp", "statusCode", "error", "message"}
    assert body["statusCode"] == 404 and body["error"] == "Not Found"
    assert "code" not in body and "source" not in body


async def test_a_sandbox_goes_through_daytonas_states(emulator: DaytonaEmulator) -> None:
    emulator.set_start_delay(1.5)
    seen: list[str] = []
    request = urllib.request.Request(
        f"{emulator.api_url}/sandbox",
        data=b"{}",
        method="POST",
        headers={"Authorization": f"Bearer {emulator.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        created = json.loads(response.read())
    seen.append(created["state"])
    deleted_while_creating, body = api(emulator, "DELETE", f"/sandbox/{created['id']}")
    assert deleted_while_creating == 409
    assert body["message"] == "Sandbox state change in progress"

    def started() -> bool:
        state = str(api(emulator, "GET", f"/sandbox/{created['id']}")[1]["state"])
        if state != seen[-1]:
            seen.append(state)
        return state == "started"

    await eventually(started, within=20, interval=0.05, what="the sandbox started")
    assert seen[0] == "creating" and seen[-1] == "started"
    assert set(seen) <= {"creating", "pulling_snapshot", "starting", "started"}
    assert api(emulator, "DELETE", f"/sandbox/{created['id']}")[0] == 200


# --- deletes --------------------------------------------------------------------------------------


async def test_a_delete_answered_409_is_retried_until_the_sandbox_is_gone(
    emulator: DaytonaEmulator,
) -> None:
    provider = DaytonaProvider(make_config(emulator, delete_deadline_seconds=20))
    try:
        emulator.busy_deletes(1.0, seconds=1.5)
        created = await provider.create(spec(), timeout=30)
        await provider.delete(created)
        assert emulator.sandboxes == {}
        assert emulator.count(DELETE) >= 2, "the first delete met a state change in progress"
    finally:
        await provider.aclose()


async def test_a_create_timeout_waits_out_the_transition_and_deletes(
    emulator: DaytonaEmulator,
) -> None:
    provider = DaytonaProvider(make_config(emulator, delete_deadline_seconds=20))
    try:
        emulator.hang_next_create(seconds=2)
        with pytest.raises(ProviderTimeout) as caught:
            await provider.create(spec("stuck"), timeout=0.5)
        assert caught.value.leftovers == ()
        assert emulator.sandboxes == {}
        assert emulator.count(DELETE) >= 2
    finally:
        await provider.aclose()


async def test_what_cannot_be_deleted_in_time_is_named_in_the_error(
    emulator: DaytonaEmulator,
) -> None:
    provider = DaytonaProvider(make_config(emulator, delete_deadline_seconds=0.5))
    try:
        emulator.hang_next_create(seconds=None)
        with pytest.raises(ProviderTimeout) as caught:
            await provider.create(spec("stuck"), timeout=0.5)
        assert caught.value.leftovers == tuple(emulator.sandboxes)
        assert len(caught.value.leftovers) == 1
    finally:
        await provider.aclose()


# --- probes -------------------------------------------------------------------------------------


async def test_a_stale_token_is_not_ready_and_the_link_is_fetched_again(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await with_workdir(provider)
    port = free_port()
    await provider.start_server(created, f"python3 -m http.server {port}", port=port)
    await eventually(lambda: provider.probe(created, port, timeout=2), within=20, what="ready")
    api(emulator, "POST", f"/sandbox/{created.provider_id}/autodelete/-1")  # kept when stopped
    emulator.stop_sandbox(created.provider_id)  # a restart resets the preview token
    api(emulator, "POST", f"/sandbox/{created.provider_id}/start")
    await provider.start_server(created, f"python3 -m http.server {port}", port=port)
    # The token we hold is stale now: Daytona's proxy answers 307 to its login page, which is
    # not the app — and the token is asked for again, so the next probes reach the app.
    assert await provider.probe(created, port, timeout=2) is False
    await eventually(lambda: provider.probe(created, port, timeout=2), within=20, what="ready")
    assert emulator.count(PREVIEW_URL) == 2
    assert emulator.preview_activity(created.provider_id) == 0, "probes are not activity"


async def test_a_stopped_sandbox_is_not_ready(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    await provider.upstream(created, 8080)  # the link is held
    emulator.archive_sandbox(created.provider_id)
    assert await provider.probe(created, 8080, timeout=2) is False  # the proxy's 400


async def test_a_server_that_exits_fails_the_probe_with_its_exit_code(
    provider: DaytonaProvider,
) -> None:
    created = await with_workdir(provider)
    lines: list[str] = []

    async def on_output(line: str, stream: str) -> None:
        lines.append(line)

    port = free_port()
    await provider.start_server(
        created, "echo 'cannot bind'; exit 3", port=port, on_output=on_output
    )
    started = time.monotonic()
    with pytest.raises(ServerExited) as caught:
        async with asyncio.timeout(30):  # before: `starting` until START_TIMEOUT_SECONDS
            while True:
                await provider.probe(created, port, timeout=2)
                await asyncio.sleep(0.05)
    assert caught.value.exit_code == 3
    assert time.monotonic() - started < 10
    assert "cannot bind" in lines


# --- rate limits and quota ------------------------------------------------------------------------


async def test_create_honours_retry_after_sandbox_create(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.fail_next(CREATE, 429, retry_after=1)
    started = time.monotonic()
    await provider.create(spec(), timeout=30)
    assert time.monotonic() - started >= 1.0
    assert emulator.count(CREATE) == 2


async def test_quota_exceeded_is_our_provider_quota_with_a_clear_message(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    await provider.create(spec("first"), timeout=30)
    emulator.set_quota(cpu=1)
    with pytest.raises(ProviderQuota) as caught:
        await provider.create(spec("second"), timeout=30)
    assert caught.value.code == "provider_quota"
    assert "total CPU limit" in caught.value.message
    assert emulator.count(CREATE) == 2, "not retried"


# --- commands -----------------------------------------------------------------------------------


async def test_a_command_reading_stdin_does_not_hang(provider: DaytonaProvider) -> None:
    created = await with_workdir(provider)
    result = await provider.exec(created, "cat; echo read-all", timeout=10)
    assert result.exit_code == 0
    assert "read-all" in result.output_tail


async def test_listings_lag_behind_creates(emulator: DaytonaEmulator) -> None:
    provider = DaytonaProvider(make_config(emulator))
    try:
        emulator.set_list_lag(3600)
        created = await provider.create(spec(), timeout=30)
        assert created.provider_id in emulator.sandboxes
        assert await provider.list_sandboxes({"midori-preview": "1"}) == []
    finally:
        await provider.aclose()


# --- git refs -----------------------------------------------------------------------------------


@pytest.fixture
def tagged(tmp_path: Path) -> Iterator[tuple[GitServer, dict[str, str]]]:
    """A served repository: `main`, a tag `v1` off main's history, and a commit on `feature`."""
    import subprocess

    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "-q", "-b", "main")
    (work / "index.html").write_text("<h1>v1</h1>")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "v1")
    git(work, "tag", "v1")
    (work / "index.html").write_text("<h1>main</h1>")
    git(work, "commit", "-q", "-am", "main")
    git(work, "checkout", "-q", "-b", "feature", "v1")
    (work / "index.html").write_text("<h1>feature</h1>")
    git(work, "commit", "-q", "-am", "feature")
    refs = {"feature_sha": git(work, "rev-parse", "HEAD").strip()}
    git(work, "checkout", "-q", "main")
    git(work, "tag", "v2-off-main", refs["feature_sha"])
    root = tmp_path / "served"
    root.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(root / "site.git")], check=True)
    served = GitServer(root, "unused")
    served.expected = basic("alice-user", PASSWORD)
    try:
        yield served, refs
    finally:
        served.close()


@pytest.mark.parametrize(
    ("ref", "page"),
    [
        ("main", "<h1>main</h1>"),
        ("v1", "<h1>v1</h1>"),
        ("v2-off-main", "<h1>feature</h1>"),
        ("feature_sha", "<h1>feature</h1>"),
    ],
)
async def test_every_ref_clones_on_daytona(
    emulator: DaytonaEmulator,
    provider: DaytonaProvider,
    tagged: tuple[GitServer, dict[str, str]],
    ref: str,
    page: str,
) -> None:
    served, refs = tagged
    created = await provider.create(spec(), timeout=30)
    await provider.clone(
        created,
        f"{served.url}/site.git",
        refs.get(ref, ref),
        timeout=60,
        credentials=GitCredentials("alice-user", PASSWORD),
    )
    home = emulator.sandbox_home(created.provider_id)
    assert (home / "app/index.html").read_text() == page
    assert not list(home.glob(".midori-askpass-*")), "the credential file is gone"
    assert not list(home.rglob("*askpass*")), "no credential file anywhere"


async def test_a_ref_that_does_not_exist_fails(
    provider: DaytonaProvider, tagged: tuple[GitServer, dict[str, str]]
) -> None:
    served, _ = tagged
    created = await provider.create(spec(), timeout=30)
    with pytest.raises(ProviderError):
        await provider.clone(
            created,
            f"{served.url}/site.git",
            "no-such-ref",
            timeout=60,
            credentials=GitCredentials("alice-user", PASSWORD),
        )
