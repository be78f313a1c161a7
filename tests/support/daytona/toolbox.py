"""The sandbox toolbox: bulk upload, process execution and git clone (sessions: `sessions.py`).
Commands really run (`bash -c`), each in its own process group, with a clean environment;
`process/execute` defaults to a 10 s timeout, as the API documents.

When bubblewrap works on this host, the sandbox directory is mounted at /home/daytona for its
commands, so absolute paths line up with a real sandbox; otherwise commands get the directory as
cwd and HOME, and `/home/daytona` in a command line is rewritten to it. Only paths under
/home/daytona (or relative to it) are accepted as a command's cwd or a clone's destination; a bulk
upload goes anywhere, as the daemon's does (files.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from aiohttp import web

from tests.support.daytona import files, routes
from tests.support.daytona.state import (
    BASE_PATH,
    HOME,
    SOURCE_DAEMON,
    ApiError,
    GitCloneRecord,
    Handler,
    Sandbox,
    Session,
    State,
    exit_code,
    json_body,
    kill_group,
    str_map,
)


def bwrap_mounts(home: Path) -> list[str]:
    return ["--dev-bind", "/", "/", "--tmpfs", "/home", "--bind", str(home), HOME]


def detect_bwrap(root: Path, use_bwrap: bool | None) -> str | None:
    """The bwrap executable if commands can run in it here (`use_bwrap`: None = if it works)."""
    if use_bwrap is False:
        return None
    exe = shutil.which("bwrap")
    works = False
    if exe is not None:
        argv = [exe, *bwrap_mounts(root), "true"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            works = subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    if not works and use_bwrap:
        raise RuntimeError("bubblewrap was required but does not work here")
    return exe if works else None


class ToolboxApi:
    def __init__(self, state: State) -> None:
        self.state = state

    def handlers(self) -> dict[str, Handler]:
        return {
            routes.UPLOAD: self.upload,
            routes.EXECUTE: self.execute,
            routes.GIT_CLONE: self.git_clone,
        }

    # --- paths, environment, processes -------------------------------------------------------

    def host_path(self, sb: Sandbox, path: str) -> Path:
        """Where a sandbox path lives on this host (400 for anything outside /home/daytona)."""
        if path == HOME or path.startswith(HOME + "/"):
            relative = path[len(HOME) :].lstrip("/")
        elif path.startswith("/"):
            raise ApiError(
                400,
                "the emulator supports only paths under /home/daytona",
                code="INVALID_FILE_PATH",
                source=SOURCE_DAEMON,
            )
        else:
            relative = path
        home = sb.home.resolve()
        target = (home / relative).resolve()
        if not target.is_relative_to(home):
            raise ApiError(
                400, "path escapes the sandbox", code="INVALID_FILE_PATH", source=SOURCE_DAEMON
            )
        return target

    def inner_path(self, sb: Sandbox, host: Path) -> str:
        """A host path as the sandbox's commands see it."""
        relative = host.relative_to(sb.home.resolve()).as_posix()
        if self.state.bwrap is None:
            return str(host)
        return HOME if relative == "." else f"{HOME}/{relative}"

    def env(self, sb: Sandbox, extra: dict[str, str]) -> dict[str, str]:
        env = {
            "PATH": BASE_PATH,
            "HOME": HOME if self.state.bwrap else str(sb.home),
            "USER": "daytona",
            "LANG": "C.UTF-8",
            "SHELL": "/bin/bash",
        }
        env.update(sb.env)
        env.update(extra)
        return env

    async def spawn(
        self,
        sb: Sandbox,
        command: str,
        cwd: Path,
        env: dict[str, str],
        *,
        merge_stderr: bool,
        session: Session | None = None,
        stdin_open: bool = False,
    ) -> asyncio.subprocess.Process:
        if not cwd.is_dir():
            raise ApiError(400, f"working directory {cwd.name!r} does not exist")
        bwrap = self.state.bwrap
        if bwrap is not None:
            argv = [bwrap, *bwrap_mounts(sb.home)]
            argv += ["--chdir", self.inner_path(sb, cwd), "bash", "-c", command]
        else:  # no mount namespace: point the sandbox's absolute paths at its directory
            argv = ["bash", "-c", command.replace(HOME, str(sb.home))]
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            env=env,
            # An async session command's stdin is a FIFO that Daytona's daemon keeps open for
            # SendInput (pkg/session/execute.go): a command that reads stdin waits forever.
            # Sync commands see EOF at once.
            stdin=asyncio.subprocess.PIPE if stdin_open else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        with self.state.lock:
            sb.pgids.add(process.pid)
            if session is not None:
                session.pgids.add(process.pid)
        return process

    def forget_group(self, sb: Sandbox, pgid: int) -> None:
        # Drop a group once it has no member left, so that a recycled pid is never killed.
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            with self.state.lock:
                sb.pgids.discard(pgid)
                for session in sb.sessions.values():
                    session.pgids.discard(pgid)

    # --- files and one-shot commands ---------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        """As the daemon does it, unconfined (see files.py)."""
        return await files.bulk_upload(self.state.running(request), request)

    async def execute(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        body = await json_body(request)
        command = body.get("command")
        if not isinstance(command, str):
            raise ApiError(400, "command is required")
        cwd = self.host_path(sandbox, body.get("cwd") or HOME)
        timeout = body.get("timeout") or 10
        env = self.env(sandbox, str_map(body.get("envs"), "envs"))
        process = await self.spawn(sandbox, command, cwd, env, merge_stderr=True)
        try:
            output, _ = await asyncio.wait_for(process.communicate(), timeout)
        except TimeoutError:
            kill_group(process.pid)
            await process.wait()
            raise ApiError(
                408,
                "command execution timeout",
                code="PROCESS_EXECUTION_TIMEOUT",
                source=SOURCE_DAEMON,
            ) from None
        finally:
            self.forget_group(sandbox, process.pid)
        result = output.decode("utf-8", "replace")
        code = exit_code(process.returncode or 0)
        return web.json_response({"exitCode": code, "result": result})

    # --- git ---------------------------------------------------------------------------------

    async def git_clone(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.running(request)
        body = await json_body(request)
        url, path = body.get("url"), body.get("path")
        if not isinstance(url, str) or not isinstance(path, str):
            raise ApiError(400, "url and path are required")
        branch, commit_id = body.get("branch"), body.get("commit_id")
        username, password = body.get("username"), body.get("password")
        with self.state.lock:
            self.state.git_clones.append(
                GitCloneRecord(sandbox.id, url, path, branch, commit_id, username, password)
            )
        destination = self.host_path(sandbox, path)
        if destination.exists() and any(destination.iterdir()):
            raise ApiError(400, "destination is not empty", code="GIT_CLONE_FAILED")
        existed = destination.exists()
        script = self.clone_script(self.inner_path(sandbox, destination), url, branch, commit_id)
        env = {"GIT_TERMINAL_PROMPT": "0"}
        if username is not None or password is not None:
            env |= {"GIT_ASKPASS": str(self.askpass()), "EMU_GIT_USERNAME": username or ""}
            env["EMU_GIT_PASSWORD"] = password or ""
        process = await self.spawn(
            sandbox, script, sandbox.home, self.env(sandbox, env), merge_stderr=True
        )
        try:
            await asyncio.wait_for(process.communicate(), 300)
        except TimeoutError:
            kill_group(process.pid)
            raise ApiError(504, "git clone timed out") from None
        finally:
            self.forget_group(sandbox, process.pid)
        if process.returncode != 0:  # go-git removes what a failed clone wrote
            if existed:
                for child in destination.iterdir():
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            else:
                shutil.rmtree(destination, ignore_errors=True)
            raise ApiError(400, "git clone failed", code="GIT_CLONE_FAILED", source=SOURCE_DAEMON)
        return web.Response(status=200)

    @staticmethod
    def clone_script(inner: str, url: str, branch: str | None, commit_id: str | None) -> str:
        """Daytona's daemon (pkg/git/clone.go, go-git): a single-branch clone — of the remote's
        default branch, or of `refs/heads/<branch>`: a tag or anything else that is not a
        branch fails — then, with a commit id, a checkout of it, which fails unless that commit
        came with the branch."""
        argv = ["git", "clone", "--quiet", "--single-branch"]
        if branch:
            argv += ["--branch", branch]
        script = shlex.join([*argv, "--", url, inner])
        if branch:  # `git clone --branch` takes tags too; go-git's ReferenceName does not
            script += " && " + shlex.join(["git", "-C", inner, "symbolic-ref", "-q", "HEAD"])
            script += " >/dev/null"
        if commit_id:
            script += " && " + shlex.join(["git", "-C", inner, "checkout", "--quiet", commit_id])
        return script

    def askpass(self) -> Path:
        """A GIT_ASKPASS script answering from the clone's environment."""
        assert self.state.root is not None
        script = self.state.root / "askpass.sh"
        if not script.exists():
            script.write_text(
                '#!/bin/sh\ncase "$1" in\n  Username*) printf "%s" "$EMU_GIT_USERNAME" ;;\n'
                '  *) printf "%s" "$EMU_GIT_PASSWORD" ;;\nesac\n'
            )
            script.chmod(0o700)
        return script
