"""Runs one shell command line of a sandbox: inside bubblewrap when available (own mount, pid, ipc
and uts namespaces, no capabilities, read-only system, writable workspace only, and a network
namespace of its own connected by pasta: see `network.py`), else as a plain process group.
Either way with a scrubbed environment and per-sandbox resource limits."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from midori_preview.providers.base import ProviderError
from midori_preview.providers.local import network
from midori_preview.providers.local.limits import SandboxCgroup
from midori_preview.providers.local.network import Gate, NetworkSupport
from midori_preview.providers.processes import Child, spawn

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKSPACE = "/workspace"  # where the workspace appears inside bubblewrap
NPM_CACHE = "/cache/npm"
HIDDEN = ("/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-")  # behind /dev/null


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int
    max_processes: int
    max_file_mb: int
    tmp_mb: int = 512
    disk_mb: int = 0  # the sandbox's directory (workspace and home); 0: no limit


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@dataclass(eq=False)
class SandboxChild(Child):
    """A command with a network of its own: ending it ends the pasta that connects it."""

    pasta_pidfile: Path | None = None

    async def kill(self) -> None:
        await super().kill()
        if self.pasta_pidfile is not None:
            await network.end(self.pasta_pidfile)


class Runner:
    def __init__(
        self,
        *,
        isolation: str,
        limits: Limits,
        npm_cache: Path | None = None,
        network_mode: str = "isolated",
    ) -> None:
        bwrap = bwrap_path()
        if isolation == "bwrap" and bwrap is None:
            raise RuntimeError("LOCAL_SANDBOX_ISOLATION=bwrap but bubblewrap is not installed")
        self.bwrap = bwrap if isolation in ("auto", "bwrap") else None
        self.limits = limits
        self.npm_cache = npm_cache
        self.pasta = network.pasta_path()
        self.network = (
            NetworkSupport(False, "LOCAL_SANDBOX_NETWORK=host")
            if network_mode == "host"
            else NetworkSupport(False, "sandboxes run without bubblewrap")
            if self.bwrap is None
            else self._probe_network()
        )

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

    def _probe_network(self) -> NetworkSupport:
        """Once, at start-up: can this host create a network namespace, and can pasta connect
        it? Tried for real, with one command in a throw-away workspace."""
        self.network = network.probe_support(self.bwrap, self.pasta)
        if not self.network.isolated:
            return self.network

        async def attempt(workspace: Path) -> int:
            child = await self.spawn(workspace, "true")
            try:
                return await child.process.wait()
            finally:
                await child.kill()
                child.close()

        with tempfile.TemporaryDirectory(prefix="midori-netprobe-") as tmp:
            workspace = Path(tmp) / "work"
            workspace.mkdir()
            try:  # in a thread of its own: the caller may be inside a running event loop
                with ThreadPoolExecutor(1) as pool:
                    code = pool.submit(asyncio.run, attempt(workspace)).result()
            except Exception as exc:
                return NetworkSupport(False, f"a sandbox network could not be set up: {exc}")
        if code != 0:
            return NetworkSupport(False, f"a command in a sandbox network failed ({code})")
        return self.network

    @property
    def network_isolated(self) -> bool:
        """Whether each command gets a network namespace of its own (no host loopback)."""
        return self.network.isolated

    def workdir(self, workspace: Path) -> str:
        """The workspace path as commands see it."""
        return WORKSPACE if self.isolated else str(workspace)

    def environment(self, workspace: Path, extra: Mapping[str, str] | None) -> dict[str, str]:
        # HOME sits beside the workspace, never inside it (the workspace may be served as is).
        home = "/tmp/home" if self.isolated else str(workspace.parent / "home")
        env = {
            "PATH": SANDBOX_PATH,
            "HOME": home,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TMPDIR": "/tmp",
            "npm_config_update_notifier": "false",
            "npm_config_fund": "false",
            "npm_config_audit": "false",
            "NO_UPDATE_NOTIFIER": "1",
        }
        if self.npm_cache is not None:
            env["npm_config_cache"] = NPM_CACHE if self.isolated else str(self.npm_cache)
        env.update(extra or {})
        return env

    def argv(
        self, workspace: Path, command: str, env: Mapping[str, str], gate: Gate | None = None
    ) -> list[str]:
        if self.bwrap is None:
            return ["/bin/bash", "-c", command]
        args = [self.bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        for secret in HIDDEN:  # readable by a sandbox run as root (its owner) otherwise
            if Path(secret).exists():
                args += ["--ro-bind", "/dev/null", secret]
        for link in ("bin", "lib", "lib64", "sbin"):
            path = Path("/") / link
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.exists():
                args += ["--ro-bind", str(path), str(path)]
        args += ["--proc", "/proc", "--dev", "/dev"]
        if self.limits.tmp_mb > 0:  # /tmp is memory: bounded, or a sandbox could fill the RAM
            args += ["--size", str(self.limits.tmp_mb * 1024 * 1024)]
        args += ["--tmpfs", "/tmp", "--dir", "/tmp/home", "--symlink", "/tmp", "/var/tmp"]
        args += ["--bind", str(workspace), WORKSPACE]
        if self.npm_cache is not None:
            args += ["--bind", str(self.npm_cache), NPM_CACHE]
        args += ["--remount-ro", "/"]  # the sandbox's own root: nothing writable but the above
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        args += ["--cap-drop", "ALL"]  # root's capabilities (run by root) would undo the rest
        if gate is not None:  # held before exec until pasta has connected its namespace
            args += ["--unshare-net", *gate.bwrap_args()]
        # No --new-session: the sandbox keeps the process group its launcher got (killpg reaches
        # every process); stdin is /dev/null and there is no controlling tty to abuse.
        args += ["--die-with-parent", "--clearenv", "--chdir", WORKSPACE]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", "/bin/bash", "-c", command]

    def _preexec(self, cgroup: SandboxCgroup | None) -> Callable[[], None]:
        def preexec() -> None:  # runs in the child between fork and exec
            if cgroup is not None:
                cgroup.join()
            self._rlimits()

        return preexec

    def _rlimits(self) -> None:
        mb = 1024 * 1024
        if self.limits.memory_mb > 0:
            size = self.limits.memory_mb * mb
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
        if self.limits.max_file_mb > 0:
            size = self.limits.max_file_mb * mb
            resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        if self.limits.max_processes > 0 and os.getuid() != 0:
            n = self.limits.max_processes
            resource.setrlimit(resource.RLIMIT_NPROC, (n, n))

    async def spawn(
        self,
        workspace: Path,
        command: str,
        env: Mapping[str, str] | None = None,
        *,
        forward_port: int | None = None,
        cgroup: SandboxCgroup | None = None,
    ) -> Child:
        """Start `command` (in the sandbox's `cgroup`, when it has one); with a network of its
        own, `forward_port` (a server's) is the one port of it reachable from the host, on the
        host's 127.0.0.1."""
        preexec = self._preexec(cgroup)
        full_env = self.environment(workspace, env)
        launch_env = full_env if self.bwrap is None else {"PATH": SANDBOX_PATH}
        if not self.network_isolated:
            argv = self.argv(workspace, command, full_env)
            return await spawn(argv, cwd=workspace, env=launch_env, preexec_fn=preexec)
        gate = Gate()
        try:
            child = await spawn(
                self.argv(workspace, command, full_env, gate),
                cwd=workspace,
                env=launch_env,
                preexec_fn=preexec,
                pass_fds=gate.child_fds,
            )
            gate.started()
            try:
                pid = await gate.child_pid()
                await gate.set_up(pid)
                if forward_port is not None:
                    # A server starts (imports, binds, listens) while pasta connects: that
                    # overlap is most of pasta's cost in the time to a preview. A step waits.
                    gate.release()
                assert self.pasta is not None
                pidfile = await network.connect(self.pasta, pid, workspace.parent, forward_port)
            except ProviderError:
                if forward_port is None or not await _ended(child):
                    await child.kill()
                    child.close()
                    raise
                # The server ended while pasta connected (a start command that exits at once):
                # its exit code and output are the news, reported as for any server that exits.
                pidfile = None
            except BaseException:
                await child.kill()
                child.close()
                raise
            gate.release()
        finally:
            gate.close()
        return SandboxChild(child.process, child.stdout, child.stderr, child.transports, pidfile)


async def _ended(child: Child, within: float = 1.0) -> bool:
    """Whether the command has ended (or does within a moment)."""
    try:
        async with asyncio.timeout(within):
            await child.process.wait()
    except TimeoutError:
        return False
    return True
