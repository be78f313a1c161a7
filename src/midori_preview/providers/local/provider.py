"""Local sandboxes (the embedded default: previews with no account): a workspace directory and
process groups on this host, whose servers the preview gateway reaches on loopback (forwarded by
pasta into the sandbox's own network namespace when it has one)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

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
from midori_preview.providers.labels import LABEL_SANDBOX_ID
from midori_preview.providers.local import network
from midori_preview.providers.local.commands import drain, exit_code, git_clone, read_output
from midori_preview.providers.local.limits import (
    DiskLimitExceeded,
    ProcessLimitExceeded,
    SandboxCgroup,
    SandboxLimitExceeded,
    disk_usage,
    find_process_cgroups,
)
from midori_preview.providers.local.runner import Limits, Runner
from midori_preview.providers.processes import Child, kill_group, kill_group_and_wait

log = get_logger(__name__)

WATCH_SHARE = 20  # a sandbox's limit checks take at most 1/20 of a core (5%)


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
    watch_seconds: float = 1.0  # how often a sandbox's process and disk limits are checked


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
    cgroup: SandboxCgroup | None = None
    ended: SandboxLimitExceeded | None = None  # past a limit: every later call raises it
    watchdog: asyncio.Task[None] | None = None

    def check(self) -> None:
        if self.ended is not None:
            raise type(self.ended)(self.ended.message)


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
        # A pids cgroup per sandbox where the host allows: RLIMIT_NPROC does not bind root.
        self.cgroups = find_process_cgroups()
        if self.cgroups.base is None and os.getuid() == 0 and config.limits.max_processes > 0:
            log.warning(
                "local.no_process_limit",
                reason=self.cgroups.problem,
                message="sandboxes run as root without a pids cgroup: nothing limits how many "
                "processes one starts (a fork bomb reaches the host's limit)",
            )
        # Told when a sandbox is ended for going past a limit (the service stops its preview).
        self.on_limit: Callable[[str, str], Coroutine[Any, Any, None]] | None = None
        self._notices: set[asyncio.Task[None]] = set()
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
            "processLimit": self.process_limit,
            "diskLimitMb": self.config.limits.disk_mb or None,
        }

    @property
    def process_limit(self) -> str | None:
        """What limits a sandbox's processes: `cgroup` (per sandbox), `rlimit` (per user: this
        service's uid, not root), or None (nothing)."""
        if self.config.limits.max_processes <= 0:
            return None
        if self.cgroups.base is not None:
            return "cgroup"
        return "rlimit" if os.getuid() != 0 else None

    # --- lifecycle --------------------------------------------------------------------------

    def _sweep_leftovers(self) -> None:
        """Workspaces left by an earlier process of this service: their owner is gone."""
        for path in self.config.root.iterdir():
            pid_file = path / "pgids"
            if pid_file.exists():
                for pgid in pid_file.read_text().split():
                    cwd = Path(f"/proc/{pgid}/cwd")
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
        local = _Local(
            sandbox_id=spec.sandbox_id,
            root=root,
            workspace=workspace,
            labels=dict(spec.labels),
            created_at=self.config.clock.now(),
            cgroup=self.cgroups.sandbox(spec.sandbox_id, self.config.limits.max_processes),
        )
        self._sandboxes[spec.sandbox_id] = local
        if local.cgroup is not None or self.config.limits.disk_mb > 0:
            local.watchdog = asyncio.create_task(self._watch(local))
        return self.attach(spec.sandbox_id, spec.sandbox_id)

    async def _watch(self, local: _Local) -> None:
        """End the sandbox once it goes past its process or disk limit. A large workspace is
        checked less often: its walk takes at most 1/WATCH_SHARE of a core's time."""
        loop = asyncio.get_running_loop()
        pause = self.config.watch_seconds
        while local.ended is None:
            await asyncio.sleep(pause)
            began = loop.time()
            try:
                error = await asyncio.to_thread(self._over_limit, local)
            except Exception as exc:  # a check that fails must not end the watch
                log.warning(
                    "sandbox.limit_check_failed", sandbox_id=local.sandbox_id, error=str(exc)
                )
                error = None
            if error is not None:
                await self._end(local, error)
            pause = max(self.config.watch_seconds, WATCH_SHARE * (loop.time() - began))

    def _over_limit(self, local: _Local) -> SandboxLimitExceeded | None:
        limits = self.config.limits
        if local.cgroup is not None and local.cgroup.limit_hit():
            return ProcessLimitExceeded(
                f"the sandbox tried to run more than {limits.max_processes} processes "
                "(LOCAL_SANDBOX_MAX_PROCESSES) and was ended"
            )
        mb = 1024 * 1024
        if limits.disk_mb > 0 and (used := disk_usage(local.root)) > limits.disk_mb * mb:
            return DiskLimitExceeded(
                f"the sandbox used {used / mb:.0f} MB of disk, past its limit of "
                f"{limits.disk_mb} MB (LOCAL_SANDBOX_DISK_MB), and was ended"
            )
        return None

    async def _end(self, local: _Local, error: SandboxLimitExceeded) -> None:
        """Kill everything the sandbox runs; its calls raise `error` from now on (a build step
        in progress fails with it) and the service is told (a running preview stops)."""
        local.ended = error
        log.warning(
            "sandbox.limit_exceeded",
            sandbox_id=local.sandbox_id,
            code=error.code,
            message=error.message,
        )
        if local.cgroup is not None:
            await asyncio.to_thread(local.cgroup.kill_all)
        await asyncio.gather(*(kill_group_and_wait(pgid) for pgid in list(local.groups)))
        if self.on_limit is not None:  # a task of its own: its stop deletes this sandbox
            notice = asyncio.create_task(self._notify(self.on_limit, local.sandbox_id, error.code))
            self._notices.add(notice)
            notice.add_done_callback(self._notices.discard)

    @staticmethod
    async def _notify(
        on_limit: Callable[[str, str], Coroutine[Any, Any, None]], sandbox_id: str, code: str
    ) -> None:
        try:
            await on_limit(sandbox_id, code)
        except Exception as exc:  # its processes are gone; the reaper stops it (idle, expiry)
            log.warning("sandbox.limit_stop_failed", sandbox_id=sandbox_id, error=str(exc))

    def attach(self, provider_id: str, sandbox_id: str) -> ProviderSandbox:
        workspace = self.config.root / provider_id / "work"
        return ProviderSandbox(self.name, provider_id, sandbox_id, self.runner.workdir(workspace))

    def _get(self, sandbox: ProviderSandbox) -> _Local:
        local = self._sandboxes.get(sandbox.provider_id)
        if local is None:
            raise ProviderError("sandbox is gone")
        local.check()
        return local

    async def delete(self, sandbox: ProviderSandbox) -> None:
        local = self._sandboxes.pop(sandbox.provider_id, None)
        if local is None:
            return
        if local.watchdog is not None and local.watchdog is not asyncio.current_task():
            local.watchdog.cancel()
            await asyncio.gather(local.watchdog, return_exceptions=True)
        await asyncio.gather(*(kill_group_and_wait(pgid) for pgid in list(local.groups)))
        if local.cgroup is not None:  # what left its process group (`setsid`) ends here
            await asyncio.to_thread(local.cgroup.remove)
        await network.end_all(network.pidfiles(local.root), ports=local.ports.values())
        for task in local.tasks:
            task.cancel()
        await asyncio.gather(*local.tasks, return_exceptions=True)
        await asyncio.to_thread(shutil.rmtree, local.root, True)

    async def aclose(self) -> None:
        for sandbox_id in list(self._sandboxes):
            await self.delete(self.attach(sandbox_id, sandbox_id))
        await asyncio.gather(*self._notices, return_exceptions=True)
        self.cgroups.remove()
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
        await git_clone(local.workspace, local.root / "home", url, ref, timeout, credentials)

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
        child = await self.runner.spawn(local.workspace, command, env, cgroup=local.cgroup)
        self._track(local, child)
        tail: deque[str] = deque(maxlen=50)
        pump = asyncio.create_task(read_output(child, tail, on_output))
        try:
            async with asyncio.timeout(timeout):
                code = await exit_code(child.process, pump)
        except TimeoutError:
            raise CommandTimeout(f"command timed out after {timeout:g}s") from None
        finally:
            await child.kill()  # nothing a build step started outlives it
            local.groups.discard(child.pid)
            await drain(pump)
            child.close()
        local.check()  # ended for going past a limit: that, not the kill's exit code
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
            cgroup=local.cgroup,
        )
        self._track(local, child)

        async def watch() -> None:
            # The server is the start command's own process: when it ends, whatever it left in
            # the background ends too (as bubblewrap's pid namespace does), and the probe learns.
            pump = asyncio.create_task(read_output(child, deque(maxlen=1), on_output))
            try:
                code = await child.process.wait()
                await child.kill()
                local.groups.discard(child.pid)
                await drain(pump)
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
