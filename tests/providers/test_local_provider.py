"""LocalProvider on this host, with and without bubblewrap: a command ends when its own process
ends (a daemon it left in the background neither holds the step until its timeout nor outlives
it), its output is read to the last line, and a server's exit reaches the probe.

Each test runs in both isolation modes; the bubblewrap one is skipped, with the reason, on a
host without `bwrap`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from midori_preview.clock import Clock, SystemClock
from midori_preview.providers.base import (
    CommandTimeout,
    FileData,
    ProviderSandbox,
    SandboxSpec,
    ServerExited,
)
from midori_preview.providers.local import LocalProvider, LocalProviderConfig
from midori_preview.providers.local import commands as local_commands
from midori_preview.providers.local.runner import Limits
from tests.previews.helpers import pids_with_marker
from tests.support.clock import ManualClock

# A step that outlives its caller would hang until this; every test here finishes far sooner.
STEP_TIMEOUT = 60.0

MODES = [
    pytest.param("none", id="no-isolation"),
    pytest.param(
        "bwrap",
        id="bwrap",
        marks=pytest.mark.skipif(
            shutil.which("bwrap") is None, reason="bubblewrap is not installed"
        ),
    ),
]


def make_provider(root: Path, isolation: str, clock: Clock | None = None) -> LocalProvider:
    return LocalProvider(
        LocalProviderConfig(
            root=root,
            isolation=isolation,
            limits=Limits(memory_mb=2048, max_processes=256, max_file_mb=64, tmp_mb=64),
            clock=clock or SystemClock(),
        )
    )


@pytest.fixture(params=MODES)
async def box(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Box]:
    provider = make_provider(tmp_path / "sandboxes", request.param)
    assert provider.runner.isolated == (request.param == "bwrap")
    sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
    try:
        yield Box(provider, sandbox)
    finally:
        await provider.aclose()


class Box:
    def __init__(self, provider: LocalProvider, sandbox: ProviderSandbox) -> None:
        self.provider = provider
        self.sandbox = sandbox
        self.lines: list[tuple[str, str]] = []

    async def on_output(self, line: str, stream: str) -> None:
        self.lines.append((stream, line))


def marker() -> str:
    return f"midori-daemon-{secrets.token_hex(4)}"


async def test_a_step_that_starts_a_daemon_ends_with_its_shell(box: Box) -> None:
    tag = marker()
    result = await box.provider.exec(
        box.sandbox,
        f"sh -c 'sleep 300; true' {tag} & kill -0 $! && echo started",
        timeout=STEP_TIMEOUT,
        on_output=box.on_output,
    )
    assert result.exit_code == 0
    assert list(result.output_tail) == ["started"]
    assert pids_with_marker(tag) == []  # the daemon did not outlive its step


async def test_a_step_that_starts_a_server_in_the_background_ends_with_its_shell(
    box: Box,
) -> None:
    tag = marker()  # the server's own argv carries it; `kill -0` proves it was running
    server = f"python3 -m http.server 0 --bind 127.0.0.1 --directory {tag}"
    result = await box.provider.exec(
        box.sandbox, f"{server} & kill -0 $! && echo up", timeout=STEP_TIMEOUT
    )
    assert (result.exit_code, list(result.output_tail)) == (0, ["up"])
    assert pids_with_marker(tag) == []


async def test_a_failing_step_keeps_its_exit_code_and_its_output(box: Box) -> None:
    tag = marker()
    result = await box.provider.exec(
        box.sandbox,
        f"(sh -c 'sleep 300; true' {tag} &); echo boom; echo oops >&2; exit 3",
        timeout=STEP_TIMEOUT,
        on_output=box.on_output,
    )
    assert result.exit_code == 3
    assert sorted(box.lines) == [("stderr", "oops"), ("stdout", "boom")]
    assert pids_with_marker(tag) == []


async def test_every_line_written_before_the_end_is_read(box: Box) -> None:
    # More than a pipe buffer holds (64 KiB), with a daemon holding the pipe open afterwards.
    script = f"seq 1 20000; sh -c 'sleep 300; true' {marker()} &"
    result = await box.provider.exec(
        box.sandbox, script, timeout=STEP_TIMEOUT, on_output=box.on_output
    )
    assert result.exit_code == 0
    assert [line for _, line in box.lines] == [str(n) for n in range(1, 20001)]
    assert list(result.output_tail)[-1] == "20000"


async def test_a_step_past_its_timeout_is_killed_with_what_it_started(box: Box) -> None:
    tag = marker()
    with pytest.raises(CommandTimeout):
        await box.provider.exec(
            box.sandbox, f"sh -c 'sleep 300; true' {tag} & sleep 300", timeout=0.5
        )
    assert pids_with_marker(tag) == []


async def test_output_left_in_the_pipes_is_read_for_a_bounded_time(
    box: Box, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process that leaves the group (`setsid`) cannot be killed with it and may hold the
    pipes open for ever: the step still ends, once the drain bound has passed."""
    monkeypatch.setattr(local_commands, "DRAIN_SECONDS", 0.2)
    tag = marker()
    try:
        result = await box.provider.exec(
            box.sandbox, f"setsid sh -c 'sleep 300; true' {tag} & echo left", timeout=STEP_TIMEOUT
        )
        assert (result.exit_code, list(result.output_tail)) == (0, ["left"])
    finally:
        for pid in pids_with_marker(tag):  # without bubblewrap it escaped: end it here
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def server_exit(box: Box, port: int) -> ServerExited:
    """Probe until the provider reports the server gone (a condition, not a fixed wait)."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while True:
            try:
                await box.provider.probe(box.sandbox, port, timeout=1)
            except ServerExited as exc:
                return exc
            await asyncio.sleep(0.02)


async def test_a_server_that_exits_is_reported_with_its_code(box: Box) -> None:
    await box.provider.start_server(box.sandbox, "echo bye; exit 5", port=3000)
    exited = await server_exit(box, 3000)
    assert exited.exit_code == 5


async def test_a_server_that_exits_leaving_a_daemon_is_reported_and_the_daemon_ends(
    box: Box,
) -> None:
    tag = marker()
    await box.provider.start_server(
        box.sandbox,
        f"sh -c 'sleep 300; true' {tag} & exit 7",
        port=3000,
        on_output=box.on_output,
    )
    exited = await server_exit(box, 3000)
    assert exited.exit_code == 7
    assert pids_with_marker(tag) == []


async def test_a_running_server_answers_and_dies_with_its_sandbox(box: Box) -> None:
    tag = marker()
    await box.provider.start_server(
        box.sandbox,
        f"sh -c 'sleep 300; true' {tag} & exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
        port=3000,
    )
    async with asyncio.timeout(STEP_TIMEOUT):
        while not await box.provider.probe(box.sandbox, 3000, timeout=1):
            await asyncio.sleep(0.02)
    assert pids_with_marker(tag) != []  # a live server keeps what it started
    await box.provider.delete(box.sandbox)
    assert pids_with_marker(tag) == []


async def wait_serving(provider: LocalProvider, sandbox: ProviderSandbox, port: int) -> None:
    async with asyncio.timeout(STEP_TIMEOUT):
        while not await provider.probe(sandbox, port, timeout=1):
            await asyncio.sleep(0.02)


async def test_times_come_from_the_providers_clock(tmp_path: Path) -> None:
    """Creation times follow the injected clock; the server is reached at its upstream (the
    loopback address the service's gateway forwards to)."""
    clock = ManualClock()
    provider = make_provider(tmp_path / "sandboxes", "none", clock)
    try:
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        [info] = await provider.list_sandboxes({})
        assert info.created_at == clock.now()
        await provider.upload(sandbox, [FileData("index.html", b"<h1>clock</h1>")])
        await provider.start_server(
            sandbox, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1', port=3000
        )
        await wait_serving(provider, sandbox, 3000)
        upstream = await provider.upstream(sandbox, 3000)
        assert upstream.url == f"http://127.0.0.1:{provider.host_port('sbx1', 3000)}/"
        assert dict(upstream.headers) == {}
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(upstream.url)).text == "<h1>clock</h1>"
    finally:
        await provider.aclose()


async def test_a_sandbox_is_attached_from_its_stored_ids(box: Box) -> None:
    again = box.provider.attach(box.sandbox.provider_id, box.sandbox.sandbox_id)
    assert again == box.sandbox
    await box.provider.upload(again, [FileData("a.txt", b"attached")])
    result = await box.provider.exec(again, "cat a.txt; echo; pwd", timeout=STEP_TIMEOUT)
    assert list(result.output_tail) == ["attached", box.sandbox.workdir]
