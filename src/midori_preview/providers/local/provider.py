"""Local sandboxes: a workspace directory and process groups on this host, whose servers the
service's preview gateway reaches on loopback (forwarded by pasta into the sandbox's own network
namespace when it has one). The embedded default: previews with no account."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

from midori_preview.clock import Clock, SystemClock
from midori_preview.logging import get_logger
from midori_preview.providers.base import (
    CommandTimeout,
    ExecResult,
    FileData,
    GitCredentials,
    OutputCallback,
    PreviewLink,
    ProviderError,
    ProviderSandbox,
    ProviderSandboxInfo,
    ProviderState,
    SandboxSpec,
    ServerExited,
    Upstream,
)
from midori_preview.providers.files import UnsafePath, write_files
from midori_preview.providers.git import Git, GitFailed, GitTimeout
from midori_preview.providers.labels import LABEL_SANDBOX_ID
from midori_preview.providers.local import network
from midori_preview.providers.local.runner import Limits, Runner
from midori_preview.providers.processes import Child, kill_group, kill_group_and_wait

log = get_logger(__name__)

DRAIN_SECONDS = 2.0  # output left in a finished command's pipes is read for at most this long


@dataclass(frozen=True, slots=True)
class LocalProviderConfig:
    root: Path  # DATA_DIR/sandboxes
    isolation: str  # auto | bwrap | none
    limits: Limits
    npm_cache: Path | None = None
    clock: Clock = field(default_factory=SystemClock)  # creation times
    network: str = "isolated"  # isolated (when the host can) | host
    # Without a network namespace of their own: run every command anyway, or refuse all but the
    # service's own (`trusted_commands`: the templates' and the static server's command lines).
    unisolated: str = "run"  # run | refuse
    trusted_commands: frozenset[str] = frozenset()


class IsolationUnavailable(ProviderError):
    """A user-supplied command, refused: this host cannot isolate its network."""

    code = "isolation_unavailable"


@dataclass
class _Local:
    sandbox_id: str
    root: Path
    workspace: Path
    labels: dict[str, str]
    created_at: datetime
    ports: dict[int, int] = field(default_factory=dict)  # logical port → host port
    groups: set[int] = field(default_factory=set)
    exited: dict[int, int] = field(default_factory=dict)  # logical port → server exit code
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalProvider:
    name = "local"
    probe_interval = 0.005  # a refused loopback connect costs ~0.1 ms: found within 5 ms

    def __init__(self, config: LocalProviderConfig) -> None:
        self.config = config
        config.root.mkdir(parents=True, exist_ok=True)
        if config.npm_cache is not None:
            config.npm_cache.mkdir(parents=True, exist_ok=True)
        # After the directories: its start-up check runs a real sandbox command.
        self.runner = Runner(
            isolation=config.isolation,
            limits=config.limits,
            npm_cache=config.npm_cache,
            network_mode=config.network,
        )
        self._sandboxes: dict[str, _Local] = {}
        self._http = httpx.AsyncClient(timeout=2.0, trust_env=False)
        self._sweep_leftovers()

    @property
    def isolation(self) -> dict[str, object]:
        """What isolates this host's sandboxes (`/readyz` shows it)."""
        runner = self.runner
        return {
            "bubblewrap": runner.isolated,
            "network": runner.network_isolated,
            "problem": runner.network.problem,
            "unisolatedCommands": "run" if runner.network_isolated else self.config.unisolated,
        }

    # --- lifecycle --------------------------------------------------------------------------

    def _sweep_leftovers(self) -> None:
        """Workspaces left by an earlier process of this service: their owner is gone."""
        for path in self.config.root.iterdir():
            pid_file = path / "pgids"
            if pid_file.exists():
                for pgid in pid_file.read_text().split():
                    cwd = Path(f"/child/{pgid}/cwd")
                    with contextlib.suppress(OSError):
                        if str(cwd.resolve()).startswith(str(path.resolve())):
                            kill_group(int(pgid))
            network.stop_all(path)
            shutil.rmtree(path, ignore_errors=True)

    async def create(self, spec: SandboxSpec, *, timeout: float) -> ProviderSandbox:
        root = self.config.root / spec.sandbox_id
        workspace = root / "work"
        workspace.mkdir(parents=True, exist_ok=False)
        (root / "home").mkdir()
        self._sandboxes[spec.sandbox_id] = _Local(
            sandbox_id=spec.sandbox_id,
            root=root,
            workspace=workspace,
            labels=dict(spec.labels),
            created_at=self.config.clock.now(),
        )
        return self.attach(spec.sandbox_id, spec.sandbox_id)

    def attach(self, provider_id: str, sandbox_id: str) -> ProviderSandbox:
        workspace = self.config.root / provider_id / "work"
        return ProviderSandbox(self.name, provider_id, sandbox_id, self.runner.workdir(workspace))

    def _get(self, sandbox: ProviderSandbox) -> _Local:
        local = self._sandboxes.get(sandbox.provider_id)
        if local is None:
            raise ProviderError("sandbox is gone")
        return local

    async def delete(self, sandbox: ProviderSandbox) -> None:
        local = self._sandboxes.pop(sandbox.provider_id, None)
        if local is None:
            return
        await asyncio.gather(*(kill_group_and_wait(pgid) for pgid in list(local.groups)))
        await network.end_all(network.pidfiles(local.root), ports=local.ports.values())
        for task in local.tasks:
            task.cancel()
        await asyncio.gather(*local.tasks, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, local.root, True)

    async def aclose(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.delete(self.attach(sandbox_id, sandbox_id))
        await self._http.aclose()

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[ProviderSandboxInfo]:
        return [
            ProviderSandboxInfo(
                provider_id=s.sandbox_id,
                sandbox_id=s.labels.get(LABEL_SANDBOX_ID, s.sandbox_id),
                labels=dict(s.labels),
                state=ProviderState.STARTED,
                created_at=s.created_at,
            )
            for s in list(self._sandboxes.values())
            if all(s.labels.get(k) == v for k, v in labels.items())
        ]

    # --- files and commands -----------------------------------------------------------------

    async def upload(self, sandbox: ProviderSandbox, files: Sequence[FileData]) -> None:
        workspace = self._get(sandbox).workspace
        try:
            await asyncio.to_thread(write_files, workspace, files)
        except UnsafePath as exc:
            raise ProviderError(f"path escapes the workspace: {exc.path}") from None

    async def clone(
        self,
        sandbox: ProviderSandbox,
        url: str,
        ref: str | None,
        *,
        timeout: float,
        credentials: GitCredentials | None = None,
    ) -> None:
        """Clone on the host side into the workspace (a `file://` source stays reachable), with
        git's own config and prompts off; credentials only ever go through the environment."""
        local = self._get(sandbox)
        await _git_clone(local.workspace, local.root / "home", url, ref, timeout, credentials)

    async def keep_alive(self, sandbox: ProviderSandbox) -> bool:
        """Local sandboxes keep no idle clock of their own: the reaper alone stops them."""
        return False

    def _allowed(self, command: str) -> None:
        config = self.config
        if self.runner.network_isolated or config.unisolated != "refuse":
            return
        if command not in config.trusted_commands:
            raise IsolationUnavailable(
                "this host cannot give sandboxes a network of their own "
                f"({self.runner.network.problem}): commands of your own are refused here"
            )

    def _track(self, local: _Local, child: Child) -> None:
        local.groups.add(child.pid)
        with open(local.root / "pgids", "a") as f:
            f.write(f"{child.pid}\n")

    async def exec(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        local = self._get(sandbox)
        self._allowed(command)
        child = await self.runner.spawn(local.workspace, command, env)
        self._track(local, child)
        tail: deque[str] = deque(maxlen=50)
        pump = asyncio.create_task(_pump(child, tail, on_output))
        try:
            async with asyncio.timeout(timeout):
                code = await _exit_code(child.process, pump)
        except TimeoutError:
            raise CommandTimeout(f"command timed out after {timeout:g}s") from None
        finally:
            await child.kill()  # nothing a build step started outlives it
            local.groups.discard(child.pid)
            await _drain(pump)
            child.close()
        if not pump.cancelled() and (failed := pump.exception()) is not None:
            raise failed  # the output callback failed
        return ExecResult(exit_code=code, output_tail=list(tail))

    async def start_server(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        local = self._get(sandbox)
        self._allowed(command)
        host_port = local.ports.setdefault(port, _free_port())
        # The same port number inside the sandbox's namespace as on the host's loopback.
        child = await self.runner.spawn(
            local.workspace,
            command,
            {**(env or {}), "PORT": str(host_port)},
            forward_port=host_port,
        )
        self._track(local, child)

        async def watch() -> None:
            # The server is the start command's own process: when it ends, whatever it left in
            # the background ends too (as bubblewrap's pid namespace does), and the probe learns.
            pump = asyncio.create_task(_pump(child, deque(maxlen=1), on_output))
            try:
                code = await child.process.wait()
                await child.kill()
                local.groups.discard(child.pid)
                await _drain(pump)
                if not pump.cancelled() and pump.exception() is not None:
                    log.warning("sandbox.server_output_failed", sandbox_id=local.sandbox_id)
                local.exited[port] = code
                log.info("sandbox.server_exited", sandbox_id=local.sandbox_id, exit_code=code)
            except asyncio.CancelledError:
                pump.cancel()
            finally:
                child.close()

        task = asyncio.create_task(watch())
        local.tasks.add(task)
        task.add_done_callback(local.tasks.discard)

    def host_port(self, sandbox_id: str, port: int) -> int | None:
        local = self._sandboxes.get(sandbox_id)
        return None if local is None else local.ports.get(port)

    async def probe(self, sandbox: ProviderSandbox, port: int, *, timeout: float) -> bool:
        local = self._get(sandbox)
        if port in local.exited:
            raise ServerExited(
                f"the server exited (code {local.exited[port]}) before answering",
                exit_code=local.exited[port],
            )
        host_port = local.ports.get(port)
        if host_port is None:
            return False
        try:
            await self._http.get(f"http://127.0.0.1:{host_port}/", timeout=timeout)
        except httpx.HTTPError:
            return False
        return True

    async def upstream(self, sandbox: ProviderSandbox, port: int) -> Upstream:
        """The server's loopback address on this host (no credential: only the service's
        gateway, on this host, forwards to it)."""
        host_port = self._get(sandbox).ports.get(port)
        if host_port is None:
            raise ProviderError(f"no server was started on port {port}")
        return Upstream(f"http://127.0.0.1:{host_port}/")

    async def preview_link(
        self, sandbox: ProviderSandbox, port: int, *, open_url_ttl_seconds: int
    ) -> PreviewLink:
        """Local sandboxes have no link of their own: the loopback address, no credential."""
        url = (await self.upstream(sandbox, port)).url
        return PreviewLink(url=url, token="", open_url=url)


async def _pump(child: Child, tail: deque[str], on_output: OutputCallback | None) -> None:
    async def read(stream: asyncio.StreamReader, name: str) -> None:
        while True:
            raw = await stream.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            tail.append(line)
            if on_output is not None:
                await on_output(line, name)

    await asyncio.gather(read(child.stdout, "stdout"), read(child.stderr, "stderr"))


async def _exit_code(process: asyncio.subprocess.Process, pump: asyncio.Task[None]) -> int:
    """The exit code of the process itself. Not EOF on its pipes: a daemon it started in the
    background (`sleep 300 &`) holds them open. A failing output callback ends the wait."""
    waiter = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait({waiter, pump}, return_when=asyncio.FIRST_COMPLETED)
        if pump.done() and not waiter.done():
            pump.result()  # the callback's failure, if that is what ended the pump
        return await waiter
    finally:
        waiter.cancel()


async def _drain(pump: asyncio.Task[None]) -> None:
    """Let the reader take the output still in the pipes once the group is killed, for a bounded
    time: a process that left the group (`setsid`) may hold them open for ever."""
    if not pump.done():
        await asyncio.wait({pump}, timeout=DRAIN_SECONDS)
    if not pump.done():
        pump.cancel()
        await asyncio.wait({pump})


async def _git_clone(
    workspace: Path,
    home: Path,
    url: str,
    ref: str | None,
    timeout: float,
    credentials: GitCredentials | None,
) -> None:
    is_sha = ref is not None and len(ref) == 40 and all(c in "0123456789abcdef" for c in ref)
    steps: list[list[str]] = []
    if ref is None or is_sha:
        steps.append(["clone", "--quiet", "--no-recurse-submodules", "--", url, "."])
        if is_sha:
            steps.append(["-c", "advice.detachedHead=false", "checkout", "-q", ref or ""])
    else:
        steps.append(
            ["clone", "--quiet", "--depth", "1", "--no-recurse-submodules",
             "--branch", ref, "--", url, "."]
        )  # fmt: skip
    with Git(home=home, timeout=timeout, credentials=credentials) as git:
        for args in steps:
            try:
                await git.run(*args, cwd=workspace)
            except GitTimeout:
                raise CommandTimeout(f"git clone timed out after {timeout:g}s") from None
            except GitFailed as exc:
                raise ProviderError(str(exc)) from None
