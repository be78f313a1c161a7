"""Processes on this host: every command we start (a local sandbox's, git's) leads a process
group of its own, so that ending it ends everything it started, and writes its output to pipes
of our own, so that its end is known when it ends (asyncio's `Process.wait()` also waits for
EOF on asyncio's pipes, which never comes while a daemon the command left behind holds them)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(eq=False)
class Child:
    """A started command: its process (the leader of its group) and its output streams."""

    process: asyncio.subprocess.Process
    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    transports: tuple[asyncio.BaseTransport, ...]

    @property
    def pid(self) -> int:
        return self.process.pid

    async def kill(self) -> None:
        """End the command's whole process group."""
        await kill_group_and_wait(self.pid)

    def close(self) -> None:
        """Close our ends of the output pipes (a process still writing to them gets EPIPE)."""
        for transport in self.transports:
            transport.close()


async def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    preexec_fn: Callable[[], None] | None = None,
    pass_fds: Sequence[int] = (),
) -> Child:
    """Start `argv` in `cwd` with exactly `env`, stdin from /dev/null, as the leader of a new
    process group (`pass_fds`: descriptors it inherits besides its pipes). Cancelled while
    starting, it finishes starting, then kills the group: a command is never left running
    without someone holding it."""
    starting = asyncio.ensure_future(_start(argv, cwd, env, preexec_fn, pass_fds))
    try:
        return await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            child = await starting
            await child.kill()
            child.close()
        raise


async def _start(
    argv: Sequence[str],
    cwd: Path,
    env: Mapping[str, str],
    preexec_fn: Callable[[], None] | None,
    pass_fds: Sequence[int] = (),
) -> Child:
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            start_new_session=True,  # its own process group
            preexec_fn=preexec_fn,
            pass_fds=tuple(pass_fds),
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
