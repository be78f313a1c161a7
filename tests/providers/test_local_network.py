"""LocalProvider's sandbox networks on this host: every command in a network namespace of its own
(the host's Redis on 127.0.0.1 is not reachable from a step; with the host's network it is), the
pasta connecting it ends with the command and with the sandbox, and where the host cannot give
sandboxes a network of their own, `unisolated="refuse"` refuses every command but the service's.

Only the host's loopback addresses are ever aimed at."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvloop

from midori_preview.providers.base import SandboxSpec
from midori_preview.providers.commands import STATIC_SERVER
from midori_preview.providers.local import LocalProvider, LocalProviderConfig
from midori_preview.providers.local import network as local_network
from midori_preview.providers.local.provider import IsolationUnavailable
from midori_preview.providers.local.runner import Limits
from tests.conftest import REDIS_URL
from tests.previews.helpers import port_answers
from tests.support.waiting import eventually, port_refuses

needs_netns = pytest.mark.skipif(
    shutil.which("bwrap") is None or shutil.which("pasta") is None,
    reason="bubblewrap and pasta (passt) are needed for sandbox networks",
)
# Without bubblewrap every command is un-isolated whatever pasta can do: what these tests check
# (refusing or running user commands for want of a network) is about a host with bubblewrap.
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
REDIS_PORT = urlsplit(REDIS_URL).port or 6379
# Prints open or closed: can this command connect to the host's Redis on its loopback address?
CONNECT = (
    "python3 -c 'import socket\n"
    "try:\n"
    f'    socket.create_connection(("127.0.0.1", {REDIS_PORT}), timeout=5); print("open")\n'
    "except OSError:\n"
    '    print("closed")\''
)


def make_provider(root: Path, **config: object) -> LocalProvider:
    return LocalProvider(
        LocalProviderConfig(
            root=root,
            isolation="bwrap",
            limits=Limits(memory_mb=2048, max_processes=256, max_file_mb=64, tmp_mb=64),
            **config,  # type: ignore[arg-type]
        )
    )


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    provider = make_provider(tmp_path / "sandboxes")
    try:
        yield provider
    finally:
        await provider.aclose()


def pastas_of(root: Path) -> list[int]:
    """Running pasta processes whose command line names a file under `root`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            ours = argv[0].endswith(b"pasta") and any(str(root).encode() in a for a in argv)
            if state != b"Z" and ours:
                found.append(int(entry.name))
    return found


@needs_netns
@pytest.mark.parametrize(("network", "expected"), [("isolated", "closed"), ("host", "open")])
async def test_a_step_reaches_the_hosts_redis_only_on_the_hosts_network(
    tmp_path: Path, network: str, expected: str
) -> None:
    assert port_answers(REDIS_PORT)  # Redis does listen on the host's loopback
    provider = make_provider(tmp_path / "sandboxes", network=network)
    try:
        assert provider.runner.network_isolated == (network == "isolated")
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        result = await provider.exec(sandbox, CONNECT, timeout=60)
    finally:
        await provider.aclose()
    assert (result.exit_code, list(result.output_tail)) == (0, [expected])


@needs_netns
def test_sandbox_networks_work_under_uvloop(tmp_path: Path) -> None:
    """`midori-preview serve` runs on uvloop (uvicorn's default when installed): pasta, which
    detaches, must not hold the set-up waiting there either."""

    async def scenario() -> tuple[str, bool]:
        provider = make_provider(tmp_path / "sandboxes")
        try:
            sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
            async with asyncio.timeout(60):
                result = await provider.exec(sandbox, CONNECT, timeout=60)
                await provider.start_server(sandbox, STATIC_SERVER, port=3000)
                await eventually(
                    lambda: provider.probe(sandbox, 3000, timeout=2), within=30, what="serves"
                )
            return result.output_tail[-1], provider.runner.network_isolated
        finally:
            await provider.aclose()

    assert uvloop.run(scenario()) == ("closed", True)


@needs_netns
async def test_a_steps_pasta_ends_with_the_step(provider: LocalProvider, tmp_path: Path) -> None:
    sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
    result = await provider.exec(sandbox, "ip -o link show | wc -l", timeout=60)
    assert result.exit_code == 0 and int(result.output_tail[-1]) >= 2  # lo and pasta's interface
    await eventually(lambda: pastas_of(tmp_path / "sandboxes") == [], what="pasta ends")
    assert list((tmp_path / "sandboxes" / "sbx1").glob("pasta-*")) == []


@needs_netns
async def test_a_servers_port_is_forwarded_and_its_pasta_ends_with_the_sandbox(
    provider: LocalProvider, tmp_path: Path
) -> None:
    sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
    await provider.start_server(sandbox, STATIC_SERVER, port=3000)
    await eventually(lambda: provider.probe(sandbox, 3000, timeout=2), within=30, what="serves")
    assert len(pastas_of(tmp_path / "sandboxes")) == 1
    port = provider.host_port("sbx1", 3000)
    assert port is not None and port_answers(port)
    await provider.delete(sandbox)
    await eventually(lambda: pastas_of(tmp_path / "sandboxes") == [], what="pasta ends")
    await eventually(lambda: port_refuses(port), what="the forwarded port is closed")


@needs_netns
async def test_pastas_left_by_an_earlier_process_are_ended(tmp_path: Path) -> None:
    first = make_provider(tmp_path / "sandboxes")
    sandbox = await first.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
    await first.start_server(sandbox, STATIC_SERVER, port=3000)
    await eventually(lambda: first.probe(sandbox, 3000, timeout=2), within=30, what="serves")
    assert len(pastas_of(tmp_path / "sandboxes")) == 1
    # A new process on the same directory (as after a crash of the first) sweeps what it finds.
    second = make_provider(tmp_path / "sandboxes")
    try:
        await eventually(lambda: pastas_of(tmp_path / "sandboxes") == [], what="pasta ends")
    finally:
        await first.aclose()
        await second.aclose()


@needs_bwrap
async def test_without_a_network_of_their_own_user_commands_are_refused(
    tmp_path: Path,
) -> None:
    provider = make_provider(
        tmp_path / "sandboxes",
        network="host",
        unisolated="refuse",
        trusted_commands=frozenset({STATIC_SERVER}),
    )
    try:
        assert provider.isolation["network"] is False
        assert provider.isolation["unisolatedCommands"] == "refuse"
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        with pytest.raises(IsolationUnavailable) as refused:
            await provider.exec(sandbox, "echo hi", timeout=60)
        assert refused.value.code == "isolation_unavailable"
        with pytest.raises(IsolationUnavailable):
            await provider.start_server(sandbox, "python3 -m http.server $PORT", port=3000)
        await provider.start_server(sandbox, STATIC_SERVER, port=3000)  # the service's own
        await eventually(lambda: provider.probe(sandbox, 3000, timeout=2), within=30, what="serves")
    finally:
        await provider.aclose()


@needs_bwrap
async def test_without_pasta_the_provider_says_why_and_runs_commands_when_told_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_network, "pasta_path", lambda: None)
    provider = make_provider(tmp_path / "sandboxes", unisolated="run")
    try:
        assert provider.runner.network_isolated is False
        problem = provider.isolation["problem"]
        assert isinstance(problem, str) and "pasta" in problem
        sandbox = await provider.create(SandboxSpec("sbx1", "alice", "site"), timeout=10)
        result = await provider.exec(sandbox, "echo hi", timeout=60)
        assert list(result.output_tail) == ["hi"]
    finally:
        await provider.aclose()
