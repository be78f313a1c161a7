"""Commands in a Daytona sandbox, run as session commands so that their output streams live.

A command is started with `run_async`, its output followed over the toolbox's log WebSocket
(stdout and stderr demultiplexed by the SDK), and its exit code read once the stream ends. If the
stream breaks, the exit code is polled and the output that was missed is read in one go.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
from collections import deque
from collections.abc import Mapping

import structlog
from daytona import AsyncSandbox, DaytonaError, SessionExecuteRequest

from midori_preview.providers.base import OutputCallback, ProviderError, ProviderRejected
from midori_preview.providers.daytona.errors import DaytonaRetry, vendor_detail

log = structlog.get_logger(__name__)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def shell_script(workdir: str, command: str, env: Mapping[str, str]) -> str:
    """A subshell running `command` in `workdir` with `env`, so the session itself stays as is."""
    if bad := [name for name in env if not _ENV_NAME.fullmatch(name)]:
        raise ProviderRejected(f"invalid environment variable name: {bad[0][:40]!r}")
    steps = [f"cd {shlex.quote(workdir)}"]
    if env:
        steps.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    # The newline before the closing brace keeps a trailing comment in `command` harmless.
    # Daytona gives a session command an open FIFO as stdin that never ends: a command reading
    # stdin would wait forever, so it reads /dev/null instead.
    return "(" + " && ".join(steps) + " && {\n" + command + "\n}) < /dev/null"


class OutputLines:
    """Turns output chunks into lines for `on_output` and keeps the last few."""

    def __init__(self, on_output: OutputCallback | None, tail: int) -> None:
        self._on_output = on_output
        self._partial = {"stdout": "", "stderr": ""}
        self.seen = {"stdout": 0, "stderr": 0}
        self.tail: deque[str] = deque(maxlen=tail)

    async def feed(self, stream: str, chunk: str) -> None:
        self.seen[stream] += len(chunk)
        *lines, self._partial[stream] = (self._partial[stream] + chunk).split("\n")
        for line in lines:
            await self._emit(stream, line)

    async def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._partial[stream] = ""
                await self._emit(stream, rest)

    async def _emit(self, stream: str, line: str) -> None:
        line = line.removesuffix("\r")
        self.tail.append(line)
        if self._on_output is not None:
            try:
                await self._on_output(line, stream)
            except Exception:  # a failing listener must not break the command
                log.warning("daytona.output_callback_failed", exc_info=True)


class SessionCommands:
    """Session and session-command calls on sandbox handles, with our retries and timeouts."""

    def __init__(
        self, retry: DaytonaRetry, *, request_timeout: float, poll_interval: float
    ) -> None:
        self._retry = retry
        self._timeout = request_timeout
        self._poll_interval = poll_interval

    async def create_session(self, handle: AsyncSandbox, session_id: str) -> None:
        await self._retry.call(
            "create session",
            lambda: handle.process.create_session(session_id, request_timeout=self._timeout),
            idempotent=False,
        )

    async def delete_session_quietly(self, handle: AsyncSandbox, session_id: str) -> None:
        """Delete a session, which kills what runs in it; failures are only logged."""
        with contextlib.suppress(DaytonaError):
            await handle.process.delete_session(session_id, request_timeout=self._timeout)
            return
        log.info("daytona.session_delete_failed", provider_id=handle.id)

    async def start(self, handle: AsyncSandbox, session_id: str, script: str) -> str:
        """Start `script` in the session without waiting for it; returns the command id."""
        request = SessionExecuteRequest(command=script, run_async=True)
        started = await self._retry.call(
            "run command",
            lambda: handle.process.execute_session_command(
                session_id, request, timeout=max(1, int(self._timeout))
            ),
            idempotent=False,
        )
        return started.cmd_id

    async def follow(
        self,
        handle: AsyncSandbox,
        session_id: str,
        cmd_id: str,
        lines: OutputLines,
        *,
        recover: bool = True,
    ) -> None:
        """Stream a command's output until it ends; if the stream breaks, read what was missed."""

        async def out(chunk: str) -> None:
            await lines.feed("stdout", chunk)

        async def err(chunk: str) -> None:
            await lines.feed("stderr", chunk)

        try:
            await handle.process.get_session_command_logs_async(session_id, cmd_id, out, err)
            return
        except DaytonaError as exc:
            log.info("daytona.log_stream_broken", detail=vendor_detail(exc))
            if not recover:
                return
        await self.exit_code(handle, session_id, cmd_id)
        logs = await self._retry.call(
            "read command output",
            lambda: handle.process.get_session_command_logs(
                session_id, cmd_id, request_timeout=self._timeout
            ),
        )
        await lines.feed("stdout", (logs.stdout or "")[lines.seen["stdout"] :])
        await lines.feed("stderr", (logs.stderr or "")[lines.seen["stderr"] :])

    async def exit_code(self, handle: AsyncSandbox, session_id: str, cmd_id: str) -> int:
        """The command's exit code, polling while it is still running."""
        while True:
            command = await self._retry.call(
                "read command status",
                lambda: handle.process.get_session_command(
                    session_id, cmd_id, request_timeout=self._timeout
                ),
            )
            if command.exit_code is not None:
                return command.exit_code
            await asyncio.sleep(self._poll_interval)

    async def stream_server(
        self, handle: AsyncSandbox, session_id: str, cmd_id: str, lines: OutputLines
    ) -> int | None:
        """Follow a long-running server's output for as long as it runs (a background task);
        its exit code once it ended (None when that could not be read)."""
        try:
            await self.follow(handle, session_id, cmd_id, lines)
            await lines.flush()
            code = await self.exit_code(handle, session_id, cmd_id)
            log.info("daytona.server_exited", provider_id=handle.id, exit_code=code)
            return code
        except ProviderError as exc:
            log.info("daytona.server_output_failed", provider_id=handle.id, code=exc.code)
        except Exception:
            log.warning("daytona.server_output_failed", provider_id=handle.id, exc_info=True)
        return None
