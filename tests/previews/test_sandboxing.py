"""Local sandboxes: commands never see the service's environment, the system is read-only, the
workspace is the only writable place, and the per-sandbox limits hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import Backend, make_settings, running_app
from tests.previews.helpers import create, create_running, fetch_preview, files_body

SITE = {"index.html": "<h1>box</h1>"}
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


@pytest.fixture
def embedded() -> Backend:
    return Backend("embedded", None, None)


async def test_commands_never_see_the_services_environment(
    tmp_path: Path, embedded: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTH_JWT_SECRET_FOR_TEST", "service-secret-value")
    monkeypatch.setenv("DAYTONA_API_KEY_FOR_TEST", "dtn_service_key")
    async with running_app(make_settings(tmp_path, embedded)) as app:
        status = await create_running(app, files_body("env", SITE, build="env > env.txt"))
        env = (await fetch_preview(app, status, "/env.txt")).text
    assert "PORT=" in env and "HOME=" in env  # it did run and record its environment
    assert "service-secret-value" not in env and "dtn_service_key" not in env
    assert "FOR_TEST" not in env


@needs_bwrap
async def test_the_system_is_read_only_and_only_the_workspace_is_writable(
    tmp_path: Path, embedded: Backend
) -> None:
    probe = (
        "for p in /usr/bin/x /etc/x /x /var/x; do touch $p 2>/dev/null && echo wrote:$p; done; "
        f"ls {tmp_path} >/dev/null 2>&1 && echo sees-host-tmp; "
        "touch inside && echo wrote:workspace; touch /tmp/t && echo wrote:tmp; "
        "head -c 3000000 /dev/zero > /tmp/big 2>/dev/null || echo tmp-full; echo done"
    )
    settings = make_settings(tmp_path, embedded, local_sandbox_tmp_mb=2)
    async with running_app(settings) as app:
        status = await create_running(app, files_body("ro", SITE, build=f"({probe}) > out.txt"))
        out = (await fetch_preview(app, status, "/out.txt")).text
    assert "done" in out and "wrote:workspace" in out and "wrote:tmp" in out
    assert "wrote:/" not in out, out
    assert "tmp-full" in out, "/tmp is bounded (LOCAL_SANDBOX_TMP_MB)"
    assert "sees-host-tmp" not in out, "the host's files are not visible inside the sandbox"


async def test_file_size_and_memory_limits_hold(tmp_path: Path, embedded: Backend) -> None:
    settings = make_settings(
        tmp_path, embedded, local_sandbox_max_file_mb=1, local_sandbox_memory_mb=200
    )
    async with running_app(settings) as app:
        big = await create(app, files_body("big", SITE, build="head -c 3000000 /dev/zero > big"))
        status = await app.wait_until(big.json()["sandboxId"], "error")
        assert status["error"]["step"] == "build"

        hog = "python3 -c 'b = bytearray(600 * 1024 * 1024); print(len(b))'"
        res = await create(app, files_body("hog", SITE, build=hog))
        status = await app.wait_until(res.json()["sandboxId"], "error")
        assert status["error"]["step"] == "build"
        assert any("MemoryError" in line for line in status["logsTail"]), status["logsTail"]

        fits = "head -c 500000 /dev/zero > ok && python3 -c 'b = bytearray(50 * 1024 * 1024)'"
        await create_running(app, files_body("fits", SITE, build=fits))
