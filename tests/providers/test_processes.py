"""Starting a command on the host: it leads its own process group, its end is known when it
ends (not when a daemon it left behind lets go of its pipes), and a start that is cancelled at
any point leaves nothing running."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from midori_preview.providers.processes import group_running, spawn
from tests.previews.helpers import pids_with_marker

ENV = {"PATH": "/usr/bin:/bin"}


def daemon_then(marker: str, rest: str) -> list[str]:
    return ["/bin/sh", "-c", f"sh -c 'sleep 300; true' {marker} & {rest}"]


async def test_the_end_of_a_command_is_known_while_its_daemon_holds_the_pipes(
    tmp_path: Path,
) -> None:
    marker = f"held-{secrets.token_hex(4)}"
    child = await spawn(
        daemon_then(marker, "echo out; echo err >&2; exit 4"), cwd=tmp_path, env=ENV
    )
    try:
        async with asyncio.timeout(30):
            assert await child.process.wait() == 4
        assert await child.stdout.readline() == b"out\n"
        assert await child.stderr.readline() == b"err\n"
        assert pids_with_marker(marker)  # still there, holding the pipes
        await child.kill()
        assert pids_with_marker(marker) == [] and not group_running(child.pid)
        assert await child.stdout.read() == b""  # EOF once the group is gone
    finally:
        await child.kill()
        child.close()


async def test_the_environment_is_exactly_the_one_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_SECRET", "do-not-pass")
    child = await spawn(["/usr/bin/env"], cwd=tmp_path, env={**ENV, "ONLY": "this"})
    out = await child.stdout.read()
    await child.process.wait()
    child.close()
    assert sorted(out.decode().split()) == ["ONLY=this", "PATH=/usr/bin:/bin"]


@pytest.mark.parametrize("turns", range(8))
async def test_a_start_cancelled_at_any_point_leaves_nothing_running(
    tmp_path: Path, turns: int
) -> None:
    marker = f"cancelled-{secrets.token_hex(4)}"
    starting = asyncio.create_task(
        spawn(daemon_then(marker, "exec sleep 300"), cwd=tmp_path, env=ENV)
    )
    for _ in range(turns):  # let the start get as far as this many loop turns
        await asyncio.sleep(0)
    starting.cancel()
    try:
        child = await starting
    except asyncio.CancelledError:
        assert pids_with_marker(marker) == []
        return
    await child.kill()  # started before the cancel landed: the caller holds it
    child.close()
    assert pids_with_marker(marker) == []
