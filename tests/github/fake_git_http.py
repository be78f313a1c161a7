"""git's smart-HTTP protocol the way github.com serves it, for the fake GitHub: `git
http-backend` (CGI) over the bare repositories on disk. A private repository answers 401 with
`WWW-Authenticate: Basic realm="GitHub"` unless HTTP Basic credentials carry a token GitHub
accepts (any username, as GitHub accepts `x-access-token` or a login); a public one is readable
by anyone. Pushes (receive-pack) always need a
token. Every credential seen is recorded."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Basic realm="GitHub"'}


@dataclass
class GitHTTP:
    root: Path
    token_ok: Callable[[str], bool]
    private: set[str] = field(default_factory=set)  # owner/name of private repositories
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)  # (repo, user, pass)

    async def handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        owner, _, rest = path.lstrip("/").partition("/")
        name, sep, tail = rest.partition(".git/")
        if not sep or not owner or not name:
            return Response("Not Found", 404)
        repo = f"{owner}/{name}"
        user, password = _basic(request.headers.get("authorization"))
        self.seen.append((repo, user or "", password))
        push = "git-receive-pack" in path or request.query_params.get("service") == (
            "git-receive-pack"
        )
        authorized = bool(password and self.token_ok(password))
        if (push or repo in self.private) and not authorized:
            # GitHub's answer to a missing or wrong credential (pushes always need one).
            return Response("", 401, headers=UNAUTHORIZED_HEADERS)
        if not (self.root / owner / f"{name}.git").is_dir():
            return Response("Repository not found.", 404)
        return await self._cgi(request, f"/{owner}/{name}.git/{tail}", user if authorized else None)

    async def _cgi(self, request: Request, path_info: str, user: str | None) -> Response:
        body = await request.body()
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path_info,
            "REQUEST_METHOD": request.method,
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": "127.0.0.1",
            "PATH": "/usr/bin:/bin",
        }
        if user is not None:
            env["REMOTE_USER"] = user or "x-access-token"  # enables receive-pack
        if request.headers.get("content-encoding"):
            env["HTTP_CONTENT_ENCODING"] = request.headers["content-encoding"]
        if request.headers.get("git-protocol"):
            env["GIT_PROTOCOL"] = request.headers["git-protocol"]
        proc = await asyncio.create_subprocess_exec(
            "git",
            "http-backend",
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(body)
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers[key.strip()] = value.strip()
        return Response(payload, status, headers=headers)


def _basic(header: str | None) -> tuple[str | None, str | None]:
    if not header or not header.lower().startswith("basic "):
        return None, None
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user, password
