"""Escape attempts from a local (bubblewrap) sandbox, run through the service as a user would: a
preview whose build or start command tries to read the service's environment and files, write
outside its workspace, signal the service or other sandboxes, fork without end or fill the disk.
Each is contained: the service and the other previews keep running, the host is unchanged, and a
sandbox past its process or disk limit is ended with a clear code and its slot freed.

Without bubblewrap the escapes are skipped (with the reason): plain processes promise none of
that. The process and disk limits hold with or without it (a pids cgroup where the host lets the
service make one: skipped, with the reason, where it does not)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.previews.helpers import (
    API,
    create,
    create_running,
    fetch_preview,
    files_body,
    pids_with_cwd,
    pids_with_marker,
    workspace_of,
)
from tests.support.waiting import eventually

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")

SITE = {"index.html": "<h1>neighbour</h1>"}
SERVE = 'exec python3 -m http.server "$PORT" --bind 127.0.0.1'


@pytest.fixture
def embedded() -> Backend:
    return Backend("embedded", None, None)


@contextlib.asynccontextmanager
async def app_with(tmp_path: Path, **overrides: Any) -> AsyncIterator[Running]:
    settings = make_settings(tmp_path, Backend("embedded", None, None), **overrides)
    async with running_app(settings) as app:
        yield app


async def status_of(app: Running, sandbox_id: str, user: str) -> dict[str, Any]:
    res = await app.client.get(
        f"{API}/status", params={"sandboxId": sandbox_id}, headers=user_headers(user)
    )
    assert res.status_code == 200, res.text
    return dict(res.json())


async def output_of(app: Running, user: str, name: str, script: str, before: str = "") -> str:
    """Run `script` as the build of a preview of `user`'s; what it wrote to out.txt."""
    build = f"{before}bash attack.sh > out.txt 2>&1"
    body = files_body(name, {**SITE, "attack.sh": script}, build=build)
    status = await create_running(app, body, user=user)
    return (await fetch_preview(app, status, "/out.txt")).text


def kill_marked(marker: str) -> None:
    for pid in pids_with_marker(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@needs_bwrap
async def test_a_sandbox_reads_nothing_of_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = f"escape-sentinel-{secrets.token_hex(8)}"
    monkeypatch.setenv("MIDORI_ESCAPE_SENTINEL", sentinel)
    async with app_with(tmp_path) as app:
        data = app.settings.data_dir.resolve()
        (data / ".env").write_text(f"AUTH_JWT_SECRET={sentinel}\n")
        neighbour = await create_running(
            app, files_body("n", {**SITE, "secret.txt": sentinel}), user="bob"
        )
        theirs = workspace_of(app, neighbour["sandboxId"]).resolve()
        script = f"""
            echo "own env: $(env | grep -c '^PATH=')"
            for f in /proc/{os.getpid()}/environ /proc/1/environ /proc/*/environ; do
                cat "$f" 2>/dev/null | tr '\\0' '\\n'
            done
            for f in {data}/.env {data}/midori-preview.db {theirs}/work/secret.txt \\
                     /workspace/../{theirs.name}/work/secret.txt {Path.cwd()}/.env; do
                cat "$f" 2>/dev/null && echo "read:$f"
            done
            ls {data} {theirs} 2>/dev/null && echo listed-host-dirs
            for f in /etc/shadow /etc/gshadow; do [ -s $f ] && echo "read:$f"; done
            grep -rls "{sentinel[:8]}""{sentinel[8:]}" /etc /tmp /run /var /home /cache 2>/dev/null
            echo done
        """
        out = await output_of(app, "alice", "reader", script)
    assert "own env: 1" in out and "PATH=" in out and "done" in out, out  # it did run
    assert sentinel not in out, out
    assert "read:" not in out and "listed-host-dirs" not in out, out
    assert "MIDORI_ESCAPE_SENTINEL" not in out


@needs_bwrap
async def test_a_sandbox_writes_nothing_outside_its_workspace(tmp_path: Path) -> None:
    host_tmp = Path("/tmp") / f"midori-escape-{secrets.token_hex(6)}"
    async with app_with(tmp_path) as app:
        data = app.settings.data_dir.resolve()
        neighbour = await create_running(app, files_body("n", SITE), user="bob")
        theirs = workspace_of(app, neighbour["sandboxId"]).resolve() / "work"
        before = {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()}
        targets = [
            "/escaped",
            str(host_tmp),
            f"{data}/escaped",
            f"{data}/midori-preview.db",
            f"{theirs}/index.html",
            f"{theirs}/escaped",
            "/etc/escaped",
            "/usr/escaped",
            "/proc/1/root/escaped",
        ]
        script = "\n".join(f"echo x >> {t} 2>/dev/null && echo wrote:{t}" for t in targets)
        script += "\nmkdir -p /workspace/../escaped 2>/dev/null && echo wrote:parent"
        script += "\necho inside > inside.txt && echo wrote:workspace\n"
        out = await output_of(app, "alice", "writer", script)
        # The neighbour's files and the service's are as they were; it still serves.
        assert {p: p.read_bytes() for p in theirs.rglob("*") if p.is_file()} == before
        assert (await fetch_preview(app, neighbour)).text == SITE["index.html"]
        assert not (data / "escaped").exists()
        assert (await app.client.get("/readyz")).status_code == 200  # its database is fine
    assert "wrote:workspace" in out, out  # the one writable place
    # The sandbox's /tmp is its own (a tmpfs): the host's is checked instead.
    assert [t for t in targets if f"wrote:{t}" in out and t != str(host_tmp)] == [], out
    assert "wrote:parent" not in out, out
    assert not host_tmp.exists() and not Path("/escaped").exists()


@needs_bwrap
async def test_a_sandbox_cannot_signal_the_service_or_other_sandboxes(tmp_path: Path) -> None:
    async with app_with(tmp_path) as app:
        neighbour = await create_running(app, files_body("n", SITE), user="bob")
        their_pids = pids_with_cwd(workspace_of(app, neighbour["sandboxId"]) / "work")
        assert their_pids, "the neighbour's server is found by its working directory"
        targets = " ".join(str(p) for p in [os.getpid(), os.getppid(), *their_pids])
        script = f"""
            for sig in HUP TERM KILL; do
                kill -s $sig {targets} 2>/dev/null && echo signalled:$sig
            done
            kill -HUP -1 2>/dev/null; kill -TERM -1 2>/dev/null
            for p in /proc/[0-9]*; do  # SIGKILL to every process in sight but its own build
                p=${{p#/proc/}}; [ $p = $$ ] || [ $p = $PPID ] || kill -9 $p 2>/dev/null
            done
            pkill -9 -f http.server 2>/dev/null
            echo survived
        """
        # The build's own shell ignores HUP and TERM, so that the preview goes on to run.
        out = await output_of(app, "alice", "signaller", script, before="trap '' HUP TERM; ")
        assert "survived" in out and "signalled" not in out, out
        # The service answers, the neighbour's server is the same process and still serves.
        assert (await app.client.get("/readyz")).status_code == 200
        assert all(Path(f"/proc/{pid}").exists() for pid in their_pids)
        assert (await fetch_preview(app, neighbour)).text == SITE["index.html"]
        assert (await status_of(app, neighbour["sandboxId"], "bob"))["status"] == "running"


# Bounded, so that a failing containment cannot take the machine down: at most 3000 sleepers
# (killed by the test in any case), at most 300 MB written.
def fork_bomb(tag: str) -> str:
    return f"for i in $(seq 3000); do (exec -a {tag} sleep 600) & done"


FILL_DISK = "for i in $(seq 300); do head -c 1000000 /dev/zero > fill$i || break; done"
LIMITS = {
    "local_sandbox_max_processes": 64,
    "local_sandbox_disk_mb": 5,
    "local_sandbox_watch_seconds": 0.2,
}


async def skip_without_process_limit(app: Running, code: str) -> None:
    provider = app.services.provider
    if code == "sandbox_process_limit" and provider.process_limit != "cgroup":  # type: ignore[attr-defined]
        pytest.skip(f"no pids cgroup here: {provider.cgroups.problem}")  # type: ignore[attr-defined]


async def neighbour_unharmed(app: Running, neighbour: dict[str, Any]) -> None:
    assert (await app.client.get("/readyz")).status_code == 200
    assert (await fetch_preview(app, neighbour)).text == SITE["index.html"]
    assert (await status_of(app, neighbour["sandboxId"], "bob"))["status"] == "running"


@pytest.mark.parametrize(
    ("attack", "code", "setting"),
    [
        (fork_bomb, "sandbox_process_limit", "LOCAL_SANDBOX_MAX_PROCESSES"),
        (lambda tag: FILL_DISK, "sandbox_disk_limit", "LOCAL_SANDBOX_DISK_MB"),
    ],
    ids=["fork-bomb", "fill-disk"],
)
async def test_a_build_past_its_limits_ends_its_sandbox_and_nothing_else(
    tmp_path: Path, attack: Any, code: str, setting: str
) -> None:
    tag = f"bomb{secrets.token_hex(4)}"
    try:
        async with app_with(tmp_path, **LIMITS) as app:
            skip_without_process_limit(app, code)
            neighbour = await create_running(app, files_body("n", SITE), user="bob")
            res = await create(app, files_body("attack", SITE, build=attack(tag)))
            assert res.status_code == 202, res.text
            sandbox_id = res.json()["sandboxId"]
            status = await app.wait_until(sandbox_id, "error")
            error = status["error"]
            assert (error["step"], error["code"]) == ("build", code), status
            assert setting in error["message"], error
            await eventually(lambda: not pids_with_marker(tag), within=30, what="bomb ended")
            assert not workspace_of(app, sandbox_id).exists()  # its files are gone
            await neighbour_unharmed(app, neighbour)
            await create_running(app, files_body("after", SITE))  # its slot was freed
    finally:
        kill_marked(tag)


@pytest.mark.parametrize(
    ("attack", "code"),
    [(fork_bomb, "sandbox_process_limit"), (lambda tag: FILL_DISK, "sandbox_disk_limit")],
    ids=["fork-bomb", "fill-disk"],
)
async def test_a_running_preview_past_its_limits_is_stopped_with_the_reason(
    tmp_path: Path, attack: Any, code: str
) -> None:
    tag = f"bomb{secrets.token_hex(4)}"
    # The server runs; the attack waits for the test's go (a file it drops in the workspace).
    start = f"(while [ ! -e go ]; do sleep 0.05; done; {attack(tag)}) & {SERVE}"
    try:
        async with app_with(tmp_path, **LIMITS) as app:
            skip_without_process_limit(app, code)
            neighbour = await create_running(app, files_body("n", SITE), user="bob")
            status = await create_running(app, files_body("attack", SITE, start=start))
            sandbox_id = status["sandboxId"]
            (workspace_of(app, sandbox_id) / "work" / "go").touch()

            async def stopped() -> bool:
                return (await status_of(app, sandbox_id, "alice"))["status"] == "stopped"

            await eventually(stopped, within=60, what="the attacking preview stopped")
            assert (await status_of(app, sandbox_id, "alice"))["reason"] == code
            await eventually(lambda: not pids_with_marker(tag), within=30, what="bomb ended")
            assert not workspace_of(app, sandbox_id).exists()
            await neighbour_unharmed(app, neighbour)
            await create_running(app, files_body("after", SITE))  # its slot was freed
    finally:
        kill_marked(tag)
