"""Cloning a repository at any ref into a Daytona sandbox.

Daytona's clone (`git.clone`, daemon pkg/git/clone.go) is a single-branch clone: of the remote's
default branch, or of `refs/heads/<branch>` — a tag is not a branch and fails there, and a
`commit_id` is checked out only if the commit came with that branch. So:

- a full commit id: clone the default branch and check it out (the common case: a PR's head
  merged or pushed to it); otherwise
- a name: clone it as a branch; if Daytona finds no such branch,
- fallback (tags, commits on other branches): clone the default branch, then fetch exactly the
  ref into it with the sandbox's git and check out what was fetched. Credentials for that fetch
  go in a file that only the fetch reads (through `GIT_ASKPASS`) and that is removed when it
  ends: never in an argv, a URL, a config file, a log or the sandbox's environment.
"""

from __future__ import annotations

import posixpath
import re
import shlex
import uuid
from collections.abc import Awaitable, Callable

from daytona import AsyncSandbox, FileUpload

from midori_preview.providers.base import (
    ExecResult,
    GitCredentials,
    ProviderError,
    ProviderRejected,
)
from midori_preview.providers.daytona.errors import DaytonaRetry

COMMIT = re.compile(r"[0-9a-f]{40}")
_REF = re.compile(r"[A-Za-z0-9._/+-]{1,200}")

Exec = Callable[[str, float], Awaitable[ExecResult]]  # (command line, timeout) → result


class GitClone:
    def __init__(self, retry: DaytonaRetry) -> None:
        self._retry = retry

    async def clone(
        self,
        handle: AsyncSandbox,
        workdir: str,
        url: str,
        ref: str | None,
        *,
        timeout: float,
        credentials: GitCredentials | None,
        run: Exec,
    ) -> None:
        """`url` at `ref` (branch, tag or full commit id; None: the default branch) in `workdir`."""
        if ref is not None and (not _REF.fullmatch(ref) or ref.startswith("-") or ".." in ref):
            raise ProviderRejected("the git ref is not a valid ref name")
        if ref is None or not COMMIT.fullmatch(ref):
            try:
                await self._clone(handle, workdir, url, ref, None, timeout, credentials)
                return
            except ProviderRejected:
                if ref is None:
                    raise
            await self._clear(workdir, run)  # not a branch: a tag, most likely
        else:
            try:
                await self._clone(handle, workdir, url, None, ref, timeout, credentials)
                return
            except ProviderRejected:
                await self._clear(workdir, run)  # not on the default branch
        await self._clone(handle, workdir, url, None, None, timeout, credentials)
        await self._fetch_ref(handle, workdir, ref, timeout, credentials, run)

    async def _clone(
        self,
        handle: AsyncSandbox,
        workdir: str,
        url: str,
        branch: str | None,
        commit: str | None,
        timeout: float,
        credentials: GitCredentials | None,
    ) -> None:
        await self._retry.call(
            "clone repository",
            lambda: handle.git.clone(
                url,
                workdir,
                branch=branch,
                commit_id=commit,
                username=credentials.username if credentials else None,
                password=credentials.password if credentials else None,
                request_timeout=timeout,
            ),
            idempotent=False,
        )

    async def _clear(self, workdir: str, run: Exec) -> None:
        """Empty the workdir after a failed clone (the CLI clone leaves its directory)."""
        quoted = shlex.quote(workdir)
        await run(f"rm -rf {quoted} && mkdir -p {quoted}", 60)

    async def _fetch_ref(
        self,
        handle: AsyncSandbox,
        workdir: str,
        ref: str,
        timeout: float,
        credentials: GitCredentials | None,
        run: Exec,
    ) -> None:
        git = f"git -C {shlex.quote(workdir)}"
        prefix, cleanup = "", ""
        if credentials is not None:
            # Next to the workdir, not in it (the build must not see it), nor in a shared /tmp.
            secret = f"{posixpath.dirname(workdir)}/.midori-askpass-{uuid.uuid4().hex}"
            script = (
                '#!/bin/sh\ncase "$1" in\n'
                f"  Username*) printf '%s' {shlex.quote(credentials.username)} ;;\n"
                f"  *) printf '%s' {shlex.quote(credentials.password)} ;;\nesac\n"
            )
            await self._retry.call(
                "upload git credentials",
                lambda: handle.fs.upload_files([FileUpload(script.encode(), secret)]),
            )
            prefix = f"chmod 700 {secret} && GIT_ASKPASS={secret} GIT_TERMINAL_PROMPT=0 "
            cleanup = f"; status=$?; rm -f {secret}; exit $status"
        fetch = f"{prefix}{git} fetch --quiet --no-tags origin {shlex.quote(ref)}{cleanup}"
        checkout = f"{git} -c advice.detachedHead=false checkout --quiet --detach FETCH_HEAD"
        result = await run(f"({fetch}) && {checkout}", timeout)
        if result.exit_code != 0:
            raise ProviderError(f"git could not find {ref!r} in the repository")
