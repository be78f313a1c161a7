"""The local provider's commands: their output read line by line, their exit code, and the
host-side git clone into a workspace."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path

from midori_preview.providers.base import (
    CommandTimeout,
    GitCredentials,
    OutputCallback,
    ProviderError,
)
from midori_preview.providers.git import Git, GitFailed, GitTimeout
from midori_preview.providers.processes import Child

DRAIN_SECONDS = 2.0  # output left in a finished command's pipes is read for at most this long


async def read_output(child: Child, tail: deque[str], on_output: OutputCallback | None) -> None:
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


async def exit_code(process: asyncio.subprocess.Process, pump: asyncio.Task[None]) -> int:
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


async def drain(pump: asyncio.Task[None]) -> None:
    """Let the reader take the output still in the pipes once the group is killed, for a bounded
    time: a process that left the group (`setsid`) may hold them open for ever."""
    if not pump.done():
        await asyncio.wait({pump}, timeout=DRAIN_SECONDS)
    if not pump.done():
        pump.cancel()
        await asyncio.wait({pump})


async def git_clone(
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
