"""Toolbox sessions: create, list, get, delete, run a command (sync or async), its status, its
logs, and the log-follow WebSocket (each chunk prefixed `\\x01\\x01\\x01` for stdout or
`\\x02\\x02\\x02` for stderr, close code 1000). Sessions are not persistent shells: each command
is its own `bash -c`, so `cd`/`export` do not carry over. As in Daytona's daemon, the stdin
of an async command is an open FIFO that never reaches end-of-file (a sync one sees EOF), and
output is sent a line at a time."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from tests.support.daytona import routes
from tests.support.daytona.state import (
    SOURCE_DAEMON,
    STDERR,
    STDOUT,
    ApiError,
    Command,
    Handler,
    Sandbox,
    Session,
    exit_code,
    json_body,
    kill_group,
)
from tests.support.daytona.toolbox import ToolboxApi


def _joined(command: Command, prefix: bytes | None = None) -> str:
    """The command's output so far: one stream (`prefix`) or both interleaved."""
    data = b"".join(d for p, d in command.chunks if prefix is None or p == prefix)
    return data.decode("utf-8", "replace")


def _command_json(command: Command) -> dict[str, Any]:
    body: dict[str, Any] = {"id": command.id, "command": command.command}
    if command.exit_code is not None:
        body["exitCode"] = command.exit_code
    return body


class SessionApi:
    def __init__(self, toolbox: ToolboxApi) -> None:
        self.toolbox = toolbox
        self.state = toolbox.state

    def handlers(self) -> dict[str, Handler]:
        return {
            routes.SESSION_CREATE: self.session_create,
            routes.SESSION_LIST: self.session_list,
            routes.SESSION_GET: self.session_get,
            routes.SESSION_DELETE: self.session_delete,
            routes.SESSION_EXEC: self.session_exec,
            routes.SESSION_COMMAND: self.session_command,
            routes.SESSION_LOGS: self.session_logs,
        }

    # --- sessions ----------------------------------------------------------------------------

    def session(self, request: web.Request, sandbox: Sandbox) -> Session:
        session = sandbox.sessions.get(request.match_info["sessionId"])
        if session is None:
            raise ApiError(404, "session not found", source=SOURCE_DAEMON)
        return session

    async def session_create(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        session_id = (await json_body(request)).get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise ApiError(400, "sessionId is required")
        with self.state.lock:
            if session_id in sandbox.sessions:
                raise ApiError(409, "session already exists")
            sandbox.sessions[session_id] = Session(session_id)
        return web.Response(status=201)

    async def session_list(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        return web.json_response(
            [
                {
                    "sessionId": session.id,
                    "commands": [_command_json(c) for c in session.commands.values()],
                }
                for session in list(sandbox.sessions.values())
            ]
        )

    async def session_get(self, request: web.Request) -> web.StreamResponse:
        session = self.session(request, self.state.running(request))
        commands = [_command_json(c) for c in session.commands.values()]
        return web.json_response({"sessionId": session.id, "commands": commands})

    async def session_delete(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        session = self.session(request, sandbox)
        with self.state.lock:
            for pgid in list(session.pgids):
                kill_group(pgid)
                sandbox.pgids.discard(pgid)
            sandbox.sessions.pop(session.id, None)
        return web.Response(status=204)

    async def session_exec(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        session = self.session(request, sandbox)
        body = await json_body(request)
        text = body.get("command")
        if not isinstance(text, str):
            raise ApiError(400, "command is required")
        run_async = bool(body.get("runAsync") or body.get("async"))
        command = Command(id=str(uuid.uuid4()), command=text)
        process = await self.toolbox.spawn(
            sandbox,
            text,
            sandbox.home,
            self.toolbox.env(sandbox, {}),
            merge_stderr=False,
            session=session,
            stdin_open=run_async,
        )
        with self.state.lock:
            session.commands[command.id] = command
        task = asyncio.create_task(self.pump(sandbox, process, command))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)
        if run_async:
            return web.json_response({"cmdId": command.id}, status=202)
        await asyncio.shield(task)
        return web.json_response(
            {
                "cmdId": command.id,
                "exitCode": command.exit_code,
                "output": _joined(command),
                "stdout": _joined(command, STDOUT),
                "stderr": _joined(command, STDERR),
            }
        )

    async def pump(
        self, sandbox: Sandbox, process: asyncio.subprocess.Process, command: Command
    ) -> None:
        """Collect a session command's output and exit code, waking log followers."""

        async def read(stream: asyncio.StreamReader | None, prefix: bytes) -> None:
            if stream is None:
                return
            while chunk := await _line(stream):  # the daemon streams output line by line
                async with command.cond:
                    command.chunks.append((prefix, chunk))
                    command.cond.notify_all()

        async def wait() -> None:
            code = exit_code(await process.wait())
            async with command.cond:
                command.exit_code = code
                command.cond.notify_all()

        try:
            await asyncio.gather(read(process.stdout, STDOUT), read(process.stderr, STDERR), wait())
        finally:
            async with command.cond:
                command.done = True
                if command.exit_code is None:
                    command.exit_code = -1
                command.cond.notify_all()
            self.toolbox.forget_group(sandbox, process.pid)
            if process.stdin is not None:
                process.stdin.close()

    def command(self, request: web.Request) -> Command:
        session = self.session(request, self.state.find(request))
        command = session.commands.get(request.match_info["commandId"])
        if command is None:
            raise ApiError(404, "command not found", source=SOURCE_DAEMON)
        return command

    async def session_command(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(_command_json(self.command(request)))

    async def session_logs(self, request: web.Request) -> web.StreamResponse:
        command = self.command(request)
        if request.query.get("follow") != "true":
            return web.json_response(
                {
                    "output": _joined(command),
                    "stdout": _joined(command, STDOUT),
                    "stderr": _joined(command, STDERR),
                }
            )
        ws = web.WebSocketResponse()
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "follow=true needs a WebSocket")
        await ws.prepare(request)
        if await _follow(ws, command):
            await ws.close(code=1000)
        return ws


async def _follow(ws: web.WebSocketResponse, command: Command) -> bool:
    """Send the command's output as it comes, each chunk prefixed with its stream's marker.
    True once all of it went out after the command ended; False if the client went away."""
    closed = asyncio.create_task(_drain(ws))
    sent = 0

    async def more() -> None:
        async with command.cond:
            await command.cond.wait_for(lambda: len(command.chunks) > sent or command.done)

    try:
        while True:
            waiter = asyncio.create_task(more())
            await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():  # the client went away
                waiter.cancel()
                return False
            pending, finished = command.chunks[sent:], command.done
            for prefix, data in pending:
                await ws.send_bytes(prefix + data)
            sent += len(pending)
            if finished and sent == len(command.chunks):
                return True
    except (ConnectionError, RuntimeError):
        return False
    finally:
        closed.cancel()


async def _line(stream: asyncio.StreamReader) -> bytes:
    """The next line (with its newline), or what is left at the end; long lines in pieces."""
    try:
        return await stream.readuntil(b"\n")
    except asyncio.IncompleteReadError as partial:
        return partial.partial
    except asyncio.LimitOverrunError as over:
        return await stream.read(over.consumed or 64 * 1024)


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:  # answers pings; ends when the client goes away
        pass
