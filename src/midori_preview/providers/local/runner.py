"""Runs one shell command line of a sandbox: inside bubblewrap when available (own mount, pid, ipc
and uts namespaces, read-only system, writable workspace only), else as a plain process group.
Either way with a scrubbed environment and per-sandbox resource limits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
WORKSPACE = "/workspace"  # where the workspace appears inside bubblewrap
NPM_CACHE = "/cache/npm"


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int
    max_processes: int
    max_file_mb: int
    tmp_mb: int = 512


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


class Runner:
    def __init__(self, *, isolation: str, limits: Limits, npm_cache: Path | None = None) -> None:
        bwrap = bwrap_path()
        if isolation == "bwrap" and bwrap is None:
            raise RuntimeError("LOCAL_SANDBOX_ISOLATION=bwrap but bubblewrap is not installed")
        self.bwrap = bwrap if isolation in ("auto", "bwrap") else None
        self.limits = limits
        self.npm_cache = npm_cache

    @property
    def isolated(self) -> bool:
        return self.bwrap is not None

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

    def argv(self, workspace: Path, command: str, env: Mapping[str, str]) -> list[str]:
        if self.bwrap is None:
            return ["/bin/bash", "-c", command]
        args = [self.bwrap, "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
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
        # No --new-session: the sandbox keeps the process group its launcher got (killpg reaches
        # every process); stdin is /dev/null and there is no controlling tty to abuse.
        args += ["--die-with-parent", "--clearenv", "--chdir", WORKSPACE]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return [*args, "--", "/bin/bash", "-c", command]

    def _preexec(self) -> None:  # runs in the child between fork and exec
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
        self, workspace: Path, command: str, env: Mapping[str, str] | None = None
    ) -> Child:
        full_env = self.environment(workspace, env)
        # Pipes of our own rather than asyncio's: its `Process.wait()` also waits for EOF on
        # them, which never comes while a daemon the command left behind holds them open.
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv(workspace, command, full_env),
                cwd=str(workspace),
                env=full_env if self.bwrap is None else {"PATH": SANDBOX_PATH},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_write,
                stderr=err_write,
                start_new_session=True,  # its own process group: stop kills the whole tree
                preexec_fn=self._preexec,
            )
        except BaseException:
            os.close(out_read)
            os.close(err_read)
            raise
        finally:
            os.close(out_write)  # the child holds its own copies
            os.close(err_write)
        stdout, out_transport = await _read_end(out_read)
        stderr, err_transport = await _read_end(err_read)
        return Child(process, stdout, stderr, (out_transport, err_transport))


@dataclass(eq=False)
class Child:
    """A sandbox command's process (the leader of its process group) and its output streams."""

    process: asyncio.subprocess.Process
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    transports: tuple[asyncio.BaseTransport, ...]

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        """Close our ends of the output pipes (a process still writing to them gets EPIPE)."""
        for transport in self.transports:
            transport.close()


async def _read_end(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        pipe = os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    return reader, transport


async def kill_group_and_wait(pid: int, *, timeout: float = 5.0) -> None:
    """SIGKILL a process group and wait until none of its processes is left running. Zombies
    count as gone: they hold no memory, files or sockets, and orphans among them wait for
    whichever init reaps them (not always promptly, e.g. in containers)."""
    kill_group(pid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and group_running(pid):
        kill_group(pid)
        await asyncio.sleep(0.005)


def group_running(pgid: int) -> bool:
    """Whether any non-zombie process is in process group `pgid` (read from /proc)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp …: comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


def kill_group(pid: int) -> None:
    """SIGKILL a process group (a sandbox command and everything it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
