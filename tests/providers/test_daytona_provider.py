"""DaytonaProvider on the real `daytona` SDK, against the local Daytona API emulator.

Proves the whole preview path (create → one bulk upload → commands → server → probe → preview
links → delete) and how the provider behaves when Daytona misbehaves: what it retries, what it
refuses at once, and that a failed create leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from midori_preview.providers.base import (
    CommandTimeout,
    FileData,
    GitCredentials,
    ProviderNotFound,
    ProviderQuota,
    ProviderRejected,
    ProviderSandbox,
    ProviderState,
    ProviderTimeout,
    ProviderUnavailable,
    SandboxFailed,
    SandboxProvider,
    SandboxSpec,
)
from midori_preview.providers.daytona import (
    DaytonaProvider,
    DaytonaProviderConfig,
    DaytonaSandboxFailed,
)
from midori_preview.providers.files import ArchiveLimits, read_archive
from midori_preview.providers.labels import (
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_PROJECT_ID,
    LABEL_SANDBOX_ID,
    LABEL_USER_ID,
)
from tests.previews.helpers import pids_with_marker
from tests.support.daytona import (
    CREATE,
    DELETE,
    GET,
    LAST_ACTIVITY,
    LIST,
    PREVIEW_URL,
    SESSION_EXEC,
    SIGNED_PREVIEW_URL,
    UPLOAD,
    DaytonaEmulator,
)
from tests.support.servers import free_port
from tests.support.waiting import eventually, port_refuses

THAI = "บ้านกาแฟ Baan Kafae"
DEPLOYMENT = "test-deployment"


def make_config(emulator: DaytonaEmulator, **overrides: object) -> DaytonaProviderConfig:
    values: dict[str, object] = {
        "api_key": emulator.api_key,
        "api_url": emulator.api_url,
        "target": emulator.target,
        "deployment": DEPLOYMENT,
        "idle_timeout_seconds": 300,
        "request_timeout_seconds": 5,
        "retry_attempts": 4,
        "retry_deadline_seconds": 10,
        "retry_initial_backoff_seconds": 0.02,
        "retry_max_backoff_seconds": 0.1,
        "poll_interval_seconds": 0.05,
    }
    values.update(overrides)
    return DaytonaProviderConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
async def provider(emulator: DaytonaEmulator) -> AsyncIterator[DaytonaProvider]:
    daytona = DaytonaProvider(make_config(emulator))
    try:
        yield daytona
    finally:
        await daytona.aclose()


def spec(sandbox_id: str = "sbx-1") -> SandboxSpec:
    return SandboxSpec(
        sandbox_id=sandbox_id,
        user_id="user@example.com",
        project_id="project-42",
        env={"NODE_ENV": "production"},
    )


def project_files() -> list[FileData]:
    """30 files: 27 small text files, Thai UTF-8 text, a page, and one binary file."""
    files = [
        FileData(f"src/components/part_{i:02d}.js", f"export const part{i} = {i};\n".encode())
        for i in range(27)
    ]
    files.append(FileData("content/name.txt", f"{THAI}\n".encode()))
    page = f"<!doctype html><meta charset=utf-8><h1>{THAI}</h1>\n"
    files.append(FileData("index.html", page.encode()))
    files.append(FileData("assets/logo.bin", bytes(range(256)) * 8))
    return files


def api_counts(emulator: DaytonaEmulator) -> Counter[str]:
    return Counter(emulator.counts(api_only=True))


def test_provider_satisfies_the_port(emulator: DaytonaEmulator) -> None:
    assert isinstance(DaytonaProvider(make_config(emulator)), SandboxProvider)


async def test_a_sandbox_is_attached_from_its_stored_ids(provider: DaytonaProvider) -> None:
    """A handle made from the ids a row keeps works like the one create returned: commands run
    in the workdir (a session starts in the home directory, one level up)."""
    created = await provider.create(spec(), timeout=30)
    again = provider.attach(created.provider_id, created.sandbox_id)
    assert again == created
    await provider.upload(again, [FileData("index.html", b"hi")])
    limits = ArchiveLimits(max_files=10, max_bytes=10_000)
    assert await read_archive(provider, again, timeout=30, limits=limits) == [
        FileData("index.html", b"hi")
    ]
    await provider.delete(again)


async def test_preview_lifecycle_end_to_end(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    after_create = api_counts(emulator)
    assert after_create == {CREATE: 1}, "create must be one API call, no hidden polling"

    view = emulator.sandboxes[created.provider_id]
    assert created.sandbox_id == "sbx-1" and created.workdir == "/home/daytona/app"
    assert view.labels[LABEL_MANAGED] == "1"
    assert view.labels[LABEL_DEPLOYMENT] == DEPLOYMENT
    assert view.labels[LABEL_SANDBOX_ID] == "sbx-1"
    assert view.labels[LABEL_USER_ID] == "user_example.com"  # label-safe
    assert view.labels[LABEL_PROJECT_ID] == "project-42"
    assert view.auto_stop_interval == 7  # (300 s idle + 120 s margin) → 7 minutes
    assert view.auto_delete_interval == 0
    assert view.env == {"NODE_ENV": "production"}

    files = project_files()
    await provider.upload(created, files)
    assert emulator.count(UPLOAD) == 1, "all files go in one bulk upload"
    home = emulator.sandbox_home(created.provider_id)
    for item in files:
        assert (home / "app" / item.path).read_bytes() == item.content
    assert (home / "app/content/name.txt").read_text(encoding="utf-8") == f"{THAI}\n"

    output: list[tuple[str, str]] = []

    async def on_output(line: str, stream: str) -> None:
        output.append((stream, line))

    install = await provider.exec(
        created,
        'echo "installing $STEP in $NODE_ENV"; echo "warning: peer deps" >&2; '
        "test -f index.html && ls src/components | wc -l",
        timeout=20,
        env={"STEP": "deps"},
        on_output=on_output,
    )
    assert install.exit_code == 0
    assert ("stdout", "installing deps in production") in output
    assert ("stderr", "warning: peer deps") in output
    assert ("stdout", "27") in output
    build = await provider.exec(created, "mkdir dist && cp index.html dist/ && exit 3", timeout=20)
    assert build.exit_code == 3
    assert (home / "app/dist/index.html").read_bytes() == files[-2].content

    port = free_port()
    assert not await provider.probe(created, port, timeout=1), "nothing listens yet: 502"
    server_output: list[tuple[str, str]] = []

    async def on_server_output(line: str, stream: str) -> None:
        server_output.append((stream, line))

    await provider.start_server(
        created,
        'python3 -m http.server "$PORT" --bind 127.0.0.1',
        port=port,
        env={"PORT": str(port)},
        on_output=on_server_output,
    )
    await eventually(
        lambda: provider.probe(created, port, timeout=1), within=20, what="the server answers"
    )

    link = await provider.preview_link(created, port, open_url_ttl_seconds=120)
    assert link.open_url_expires_at is not None
    assert link.open_url_expires_at > datetime.now(UTC) + timedelta(seconds=100)
    async with httpx.AsyncClient() as http:
        token = {"x-daytona-preview-token": link.token}
        page = await http.get(link.url + "index.html", headers=token)
        assert page.status_code == 200
        assert THAI in page.content.decode("utf-8")
        assert (await http.get(link.url)).status_code == 307  # Daytona: to its login page
        signed = await http.get(link.open_url + "content/name.txt")
        assert signed.status_code == 200 and signed.content.decode("utf-8") == f"{THAI}\n"
        await eventually(  # the server's request log streams back to us
            lambda: any("GET /index.html" in line for _, line in server_output),
            what="the server's log reached us",
        )

        totals = api_counts(emulator)
        print("\nDaytona API calls for create:", json.dumps(dict(after_create), indent=1))
        print("Daytona API calls for one whole preview:", json.dumps(dict(totals), indent=1))
        assert totals[GET] == 0, "handles are cached: no GET /sandbox/{id} after create"
        assert totals[PREVIEW_URL] == 1, "the preview link is fetched once and reused"

        await provider.delete(created)
        assert created.provider_id not in emulator.sandboxes
        assert emulator.deleted == [created.provider_id]
        assert emulator.count(DELETE) == 1
        gone = await http.get(link.url, headers=token)
        assert gone.status_code == 307  # a deleted sandbox's token opens nothing: the login
        assert (await http.get(link.open_url)).status_code == 307
        # The server was killed with the sandbox: soon nothing listens on its port. (Until the
        # kernel is done with it, a connection may still be accepted and then reset.)
        await eventually(lambda: port_refuses(port), what=f"port {port} closed after delete")


async def test_exec_timeout_kills_the_command(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    marker = f"midori-timeout-{secrets.token_hex(4)}"
    created = await provider.create(spec(), timeout=30)
    await provider.upload(created, [FileData("marker.txt", b"x")])
    command = f"echo begun; sh -c 'sleep 300; true' {marker}; touch late.txt"
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        await provider.exec(created, command, timeout=1)
    assert time.monotonic() - started < 5
    assert caught.value.code == "command_timeout"
    # The whole command went with the timeout, not only the provider's wait for it.
    await eventually(lambda: pids_with_marker(marker) == [], what="the timed-out command died")
    after = await provider.exec(created, "echo again", timeout=10)
    assert after.exit_code == 0 and after.output_tail == ("again",)
    assert not (emulator.sandbox_home(created.provider_id) / "app/late.txt").exists()


async def test_create_waits_until_the_sandbox_has_started(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.set_start_delay(0.3)
    created = await provider.create(spec(), timeout=30)
    assert emulator.sandboxes[created.provider_id].state == "started"
    assert emulator.count(GET) >= 1  # the SDK polled the state


async def test_resources_are_requested_with_an_image(emulator: DaytonaEmulator) -> None:
    with pytest.raises(ValueError, match="need an image"):
        make_config(emulator, cpu=2)
    daytona = DaytonaProvider(make_config(emulator, image="node:22-slim", cpu=2, memory=4, disk=8))
    try:
        created = await daytona.create(spec(), timeout=30)
        view = emulator.sandboxes[created.provider_id]
        assert (view.cpu, view.memory, view.disk, view.built_from_image) == (2, 4, 8, True)
    finally:
        await daytona.aclose()


async def test_wrong_api_key_is_rejected(emulator: DaytonaEmulator) -> None:
    daytona = DaytonaProvider(make_config(emulator, api_key="not-the-key"))
    try:
        with pytest.raises(ProviderRejected):
            await daytona.create(spec(), timeout=30)
        assert emulator.counts(api_only=True) == {CREATE: 1}
    finally:
        await daytona.aclose()


async def test_every_call_has_a_timeout(emulator: DaytonaEmulator) -> None:
    daytona = DaytonaProvider(make_config(emulator, request_timeout_seconds=1, retry_attempts=2))
    try:
        created = await daytona.create(spec(), timeout=30)
        emulator.set_latency(5, route=PREVIEW_URL)
        started = time.monotonic()
        with pytest.raises(ProviderUnavailable):
            await daytona.preview_link(created, 3000, open_url_ttl_seconds=60)
        assert time.monotonic() - started < 4
        assert emulator.count(PREVIEW_URL) == 2
    finally:
        await daytona.aclose()


async def test_create_recovers_from_two_503(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.fail_next(CREATE, 503, times=2)
    created = await provider.create(spec(), timeout=30)
    assert emulator.count(CREATE) == 3
    assert list(emulator.sandboxes) == [created.provider_id]


async def test_create_recovers_from_a_connection_reset_without_a_twin(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.reset_next(CREATE)
    created = await provider.create(spec(), timeout=30)
    assert emulator.count(CREATE) == 2
    assert emulator.count(LIST) == 1  # looked for a half-made twin before trying again
    assert list(emulator.sandboxes) == [created.provider_id]


async def test_rate_limit_waits_for_retry_after(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.fail_next(LIST, 429, retry_after=1)
    started = time.monotonic()
    assert await provider.list_sandboxes({LABEL_MANAGED: "1"}) == []
    assert time.monotonic() - started >= 1.0
    assert emulator.count(LIST) == 2


async def test_resets_past_the_sdk_retries_are_retried_by_us(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    # One SDK call gives up after at most 6 resets (its own retries of an idempotent GET, and
    # aiohttp's on reused connections): 8 need our retries on top.
    emulator.reset_next(PREVIEW_URL, times=8)
    link = await provider.preview_link(created, 8080, open_url_ttl_seconds=60)
    assert link.token == emulator.sandboxes[created.provider_id].preview_token
    assert emulator.count(PREVIEW_URL) == 9


async def test_retries_stop_at_the_attempt_bound(emulator: DaytonaEmulator) -> None:
    daytona = DaytonaProvider(make_config(emulator, retry_attempts=3))
    try:
        emulator.fail_next(LIST, 502, times=10)
        with pytest.raises(ProviderUnavailable) as caught:
            await daytona.list_sandboxes({LABEL_MANAGED: "1"})
        assert emulator.count(LIST) == 3
        assert caught.value.retryable
    finally:
        await daytona.aclose()


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "snapshot 'x' is invalid", ProviderRejected),
        (403, "Forbidden", ProviderQuota),
        (400, "Total CPU limit exceeded for organization", ProviderQuota),
        (401, "Invalid API key", ProviderRejected),
        (422, "auto-stop interval out of range", ProviderRejected),
    ],
)
async def test_non_retryable_create_errors_fail_at_once(
    emulator: DaytonaEmulator,
    provider: DaytonaProvider,
    status: int,
    message: str,
    expected: type[Exception],
) -> None:
    emulator.fail_next(CREATE, status, message=message)
    with pytest.raises(expected) as caught:
        await provider.create(spec(), timeout=30)
    assert emulator.counts(api_only=True) == {CREATE: 1}
    assert message not in str(caught.value), "vendor text never reaches our callers"
    assert emulator.sandboxes == {}


async def test_not_found_is_not_retried(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    emulator.fail_next(SIGNED_PREVIEW_URL, 404)
    with pytest.raises(ProviderNotFound):
        await provider.preview_link(created, 3000, open_url_ttl_seconds=60)
    assert emulator.count(SIGNED_PREVIEW_URL) == 1


async def test_create_that_answers_too_late_leaves_nothing(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.slow_next_create(delay=10)
    started = time.monotonic()
    with pytest.raises(ProviderTimeout):
        await provider.create(spec("slow"), timeout=1)
    assert time.monotonic() - started < 4
    assert emulator.sandboxes == {}
    assert len(emulator.deleted) == 1


async def test_create_that_never_starts_leaves_nothing(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.hang_next_create()
    with pytest.raises(ProviderTimeout) as caught:
        await provider.create(spec("stuck"), timeout=1.5)
    assert caught.value.code == "provider_timeout"
    assert emulator.sandboxes == {}
    assert len(emulator.deleted) == 1


async def test_sandbox_in_error_state_fails_with_its_reason(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    emulator.fail_next_create(reason="no runner available in region")
    with pytest.raises(SandboxFailed) as caught:
        await provider.create(spec("broken"), timeout=30)
    assert isinstance(caught.value, DaytonaSandboxFailed)
    assert caught.value.code == "sandbox_failed"
    assert caught.value.error_reason == "no runner available in region"
    assert emulator.sandboxes == {}


async def test_list_by_labels_finds_planted_orphans(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    ours = {LABEL_MANAGED: "1", LABEL_DEPLOYMENT: DEPLOYMENT}
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    orphan = emulator.plant_sandbox({**ours, LABEL_SANDBOX_ID: "orphan-1"}, created_at=long_ago)
    failed = emulator.plant_sandbox(
        {**ours, LABEL_SANDBOX_ID: "orphan-2"}, state="error", error_reason="disk full"
    )
    emulator.plant_sandbox({LABEL_MANAGED: "1", LABEL_DEPLOYMENT: "someone-else"})
    emulator.plant_sandbox({"team": "other"})
    for i in range(110):  # more than one page (the provider asks for 100 per page)
        emulator.plant_sandbox({**ours, LABEL_SANDBOX_ID: f"bulk-{i}"}, state="stopped")

    found = {info.provider_id: info for info in await provider.list_sandboxes(ours)}
    assert len(found) == 112
    assert emulator.count(LIST) == 2
    assert found[orphan].sandbox_id == "orphan-1"
    assert found[orphan].state is ProviderState.STARTED
    created_at = found[orphan].created_at
    assert created_at is not None and abs(created_at - long_ago) < timedelta(seconds=1)
    assert found[failed].state is ProviderState.ERROR
    assert found[failed].error_reason == "disk full"
    assert {i.state for i in found.values()} == {
        ProviderState.STARTED,
        ProviderState.ERROR,
        ProviderState.STOPPED,
    }


async def test_delete_of_an_unknown_sandbox_is_success(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    unknown = ProviderSandbox("daytona", "no-such-sandbox", "sbx-x", "/home/daytona/app")
    await provider.delete(unknown)
    assert emulator.count(GET) == 1
    assert emulator.count(DELETE) == 0


async def test_delete_of_a_sandbox_deleted_meanwhile_is_success(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    emulator.stop_sandbox(created.provider_id)  # Daytona's auto-stop + auto-delete got there first
    await provider.delete(created)
    assert emulator.count(DELETE) == 1


async def test_clone_passes_credentials_as_arguments(
    emulator: DaytonaEmulator, provider: DaytonaProvider, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "index.html").write_text(f"<h1>{THAI}</h1>", encoding="utf-8")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    created = await provider.create(spec(), timeout=30)

    with pytest.raises(ProviderRejected):
        await provider.clone(created, "https://user:secret@example.com/r.git", "main", timeout=60)
    await provider.clone(
        created,
        f"file://{repo}",
        "main",
        timeout=60,
        credentials=GitCredentials("x-token", "s3cret"),
    )

    home = emulator.sandbox_home(created.provider_id)
    assert (home / "app/index.html").read_text(encoding="utf-8") == f"<h1>{THAI}</h1>"
    [record] = emulator.git_clones
    assert record.url == f"file://{repo}" and record.branch == "main"
    assert (record.username, record.password) == ("x-token", "s3cret")


async def test_keep_alive_refreshes_activity(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    await provider.keep_alive(created)
    assert emulator.count(LAST_ACTIVITY) == 1


async def test_commands_are_serialized_per_sandbox(
    emulator: DaytonaEmulator, provider: DaytonaProvider
) -> None:
    created = await provider.create(spec(), timeout=30)
    await provider.upload(created, [FileData("log.txt", b"")])
    script = "echo start-{n} >> log.txt; sleep 0.2; echo end-{n} >> log.txt"
    results = await asyncio.gather(
        *(provider.exec(created, script.format(n=n), timeout=10) for n in range(3))
    )
    assert [r.exit_code for r in results] == [0, 0, 0]
    log = (emulator.sandbox_home(created.provider_id) / "app/log.txt").read_text().split()
    assert [line.split("-")[0] for line in log] == ["start", "end"] * 3
    assert emulator.count(SESSION_EXEC) == 3
