"""The service end to end on the Daytona provider: the real `daytona` SDK against the emulator.

create → upload (one request) → install → build → start → the preview answers through the URL
and token the service returned → heartbeats and status cost no Daytona call → stop deletes the
sandbox at Daytona. Faults: Daytona's errors reach our rows as our codes, and sync deletes
orphans."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.previews.helpers import get_preview
from tests.providers.test_daytona_provider import make_config
from tests.support.daytona import CREATE, LAST_ACTIVITY, UPLOAD, DaytonaEmulator
from tests.support.servers import free_port

THAI = "บ้านกาแฟ Baan Kafae"


@pytest.fixture
async def daytona_app(
    tmp_path: Path, pg_backend: Backend, emulator: DaytonaEmulator, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Running, DaytonaEmulator]]:
    overrides: dict[str, Any] = getattr(request, "param", {})
    settings = make_settings(tmp_path, pg_backend, **overrides)
    provider = DaytonaProvider(make_config(emulator, deployment=settings.preview_deployment))
    try:
        async with running_app(settings, provider=provider) as running:
            yield running, emulator
    finally:
        await provider.aclose()


def site(n: int = 30) -> list[dict[str, str]]:
    files = [{"path": "index.html", "content": f"<h1>{THAI}</h1>"}]
    files += [{"path": f"assets/part-{i:02d}.txt", "content": f"{THAI} {i}"} for i in range(n - 1)]
    return files


async def start(running: Running, port: int, **extra: Any) -> str:
    body = {"projectId": "cafe", "files": site(), "port": port, **extra}
    res = await running.client.post("/api/preview/daytona", json=body, headers=user_headers())
    assert res.status_code == 202, res.text
    return str(res.json()["sandboxId"])


async def test_preview_through_daytona_end_to_end(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    port = free_port()
    sandbox_id = await start(
        running, port, install="echo installing", build="echo built > built.txt"
    )
    status = await running.wait_until(sandbox_id, "running")
    per_create = emulator.counts(api_only=True)
    print(f"\nDaytona calls for one preview: {sum(per_create.values())} {per_create}")
    assert per_create[CREATE] == 1
    assert emulator.count(UPLOAD) == 1, "30 files go up in one bulk-upload request"

    [(provider_id, view)] = emulator.sandboxes.items()
    assert view.labels["midori-preview"] == "1"
    assert view.labels["midori-preview/deployment"] == running.settings.preview_deployment
    assert view.labels["midori-preview/sandbox-id"] == sandbox_id
    assert view.labels["midori-preview/user-id"] == "alice"
    assert view.labels["midori-preview/project-id"] == "cafe"
    assert 300 / 60 < view.auto_stop_interval <= 300 / 60 + 5, "a little above our idle timeout"
    assert view.auto_delete_interval == 0, "deleted as soon as Daytona stops it"
    home = emulator.sandbox_home(provider_id)
    assert (home / "app" / "assets" / "part-07.txt").read_bytes() == f"{THAI} 7".encode()

    # Served at the service's own preview host with the service's own credentials (the
    # gateway); Daytona's URL and token stay inside the service.
    assert urlsplit(status["previewUrl"]).netloc.endswith(".preview.localhost:8000")
    assert view.preview_token not in json.dumps(status)
    assert str(emulator.port) not in json.dumps(status)
    token = {"x-daytona-preview-token": status["previewToken"]}
    page = await get_preview(running, status["previewUrl"], headers=token)
    assert page.status_code == 200 and THAI in page.text
    assert (await get_preview(running, status["previewUrl"])).status_code == 401
    daytonas = {"x-daytona-preview-token": view.preview_token}
    assert (await get_preview(running, status["previewUrl"], headers=daytonas)).status_code == 401
    opened = await get_preview(running, status["openUrl"])
    assert opened.status_code == 200 and THAI in opened.text

    emulator.reset_calls()
    for _ in range(5):
        beat = await running.client.post(
            "/api/preview/daytona/heartbeat",
            json={"sandboxId": sandbox_id, "visible": True},
            headers=user_headers(),
        )
        assert beat.status_code == 200
        assert (await running.client.get(
            f"/api/preview/daytona/{sandbox_id}", headers=user_headers()
        )).status_code == 200  # fmt: skip
    assert emulator.counts(api_only=True) == {}, "heartbeat and status make no Daytona call"

    stopped = await running.client.post(
        "/api/preview/daytona/stop", json={"sandboxId": sandbox_id}, headers=user_headers()
    )
    assert stopped.json()["status"] == "stopped"
    assert provider_id not in emulator.sandboxes and provider_id in emulator.deleted
    gone = await get_preview(running, status["previewUrl"], headers=token)
    assert gone.status_code == 404


async def test_rejected_create_fails_at_once_with_our_code(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    emulator.fail_next(CREATE, 400, message="Invalid snapshot 'secret-internal-name'")
    status = await running.wait_until(await start(running, free_port()), "error")
    assert emulator.count(CREATE) == 1, "a 400 is never retried"
    assert status["reason"] == "error:create"
    assert status["error"]["code"] == "provider_rejected"
    assert "secret-internal-name" not in str(status), "vendor text never reaches the API"


async def test_retryable_errors_recover(daytona_app: tuple[Running, DaytonaEmulator]) -> None:
    running, emulator = daytona_app
    emulator.fail_next(CREATE, 503, times=2)
    await running.wait_until(await start(running, free_port()), "running")
    assert emulator.count(CREATE) == 3


async def test_quota_errors_have_their_own_code(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    emulator.fail_next(CREATE, 403, message="Total CPU limit exceeded. Maximum allowed: 10")
    status = await running.wait_until(await start(running, free_port()), "error")
    assert status["error"]["code"] == "provider_quota"


async def test_sandbox_in_error_state_ends_our_row_in_error(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    emulator.fail_next_create("no runner available")
    status = await running.wait_until(await start(running, free_port()), "error")
    assert status["reason"] == "error:create" and status["error"]["step"] == "create"
    assert status["error"]["code"] == "sandbox_failed"
    assert emulator.sandboxes == {}, "the failed sandbox is deleted"
    # nothing leaked: the user's slot is free again
    await running.wait_until(await start(running, free_port()), "running")


@pytest.mark.parametrize("daytona_app", [{"sandbox_create_timeout_seconds": 2}], indirect=True)
async def test_create_timeout_leaves_no_sandbox(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    emulator.hang_next_create()
    status = await running.wait_until(await start(running, free_port()), "error")
    assert status["error"]["step"] == "create"
    assert emulator.sandboxes == {}, "the sandbox Daytona accepted was found and deleted"


@pytest.mark.parametrize("daytona_app", [{"daytona_list_lag_seconds": 0}], indirect=True)
async def test_sync_deletes_orphans_and_closes_lost_rows(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    deployment = running.settings.preview_deployment
    ours = {"midori-preview": "1", "midori-preview/deployment": deployment}
    old = datetime.now(UTC) - timedelta(hours=1)
    orphan = emulator.plant_sandbox(
        {**ours, "midori-preview/sandbox-id": "nosuchrow"}, created_at=old
    )
    young = emulator.plant_sandbox({**ours, "midori-preview/sandbox-id": "justmade"})
    other = emulator.plant_sandbox(
        {"midori-preview": "1", "midori-preview/deployment": "someone-else"}, created_at=old
    )
    sandbox_id = await start(running, free_port())
    await running.wait_until(sandbox_id, "running")
    live = next(
        pid
        for pid, v in emulator.sandboxes.items()
        if v.labels.get("midori-preview/sandbox-id") == sandbox_id
    )
    emulator.stop_sandbox(live)  # Daytona's own auto-stop (+ auto-delete) behind our back

    counts = await running.services.reaper.sync()
    assert counts["orphans"] == 1 and counts["lost"] == 1
    assert orphan not in emulator.sandboxes
    assert young in emulator.sandboxes, "younger than the grace period: left alone"
    assert other in emulator.sandboxes, "another deployment's sandboxes are not ours"
    status = await running.wait_until(sandbox_id, "stopped")
    assert status["reason"] == "lost"


async def test_watched_sandboxes_reset_daytonas_auto_stop(
    daytona_app: tuple[Running, DaytonaEmulator],
) -> None:
    running, emulator = daytona_app
    sandbox_id = await start(running, free_port())
    await running.wait_until(sandbox_id, "running")
    emulator.reset_calls()
    reaper = running.services.reaper
    first = await reaper.run_pass()
    again = await reaper.run_pass()
    assert first.get("keptAlive") == 1 and "keptAlive" not in again, "at most once a minute"
    assert emulator.count(LAST_ACTIVITY) == 1
