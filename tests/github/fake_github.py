"""A local fake of the GitHub REST API, served over real HTTP by uvicorn on 127.0.0.1.

It keeps the state the integration touches (issue comments, deployments and their statuses,
repositories — each with a bare git repository on disk), checks credentials (a personal token,
or a GitHub App's RS256 JWT and the installation tokens it hands out), records every call, and
fails on demand: `fail("POST", r"/comments$", 502, times=2)`."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.servers import free_port

USER_LOGIN = "octo-bot"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    authorization: str | None


@dataclass
class Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str]


@dataclass
class FakeGitHub:
    token: str = field(default_factory=lambda: f"ghp_{secrets.token_hex(18)}")
    git_root: Path | None = None
    app_id: int | None = None
    app_public_key: str | None = None
    installation_token_ttl: int = 3600
    url: str = ""
    calls: list[Call] = field(default_factory=list)
    comments: dict[int, dict[str, Any]] = field(default_factory=dict)
    deployments: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    installation_tokens: dict[str, int] = field(default_factory=dict)  # token → installation
    failures: list[Failure] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1001))

    # --- test controls ------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next `times` calls matching method + path regex answer `status`."""
        self.failures.append(Failure(method, re.compile(pattern), status, times, headers or {}))

    def calls_to(self, method: str, pattern: str) -> list[Call]:
        rx = re.compile(pattern)
        return [c for c in self.calls if c.method == method and rx.search(c.path)]

    def comments_on(self, repo: str, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["repo"] == repo and c["issue"] == number]

    def seed_comment(self, repo: str, number: int, body: str, login: str = USER_LOGIN) -> int:
        ident: int = next(self._ids)
        self.comments[ident] = {
            "id": ident,
            "repo": repo,
            "issue": number,
            "body": body,
            "history": [body],
            "user": {"login": login},
        }
        return ident

    # --- the app ------------------------------------------------------------------------------

    def app(self) -> Starlette:
        return Starlette(
            routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "PATCH", "DELETE"])]
        )

    async def handle(self, request: Request) -> Response:
        path = "/" + request.path_params["path"]
        raw = await request.body()
        body: Any = None
        if raw:
            body = json.loads(raw)
        call = Call(
            request.method,
            path,
            dict(request.query_params),
            body,
            request.headers.get("authorization"),
        )
        self.calls.append(call)
        for failure in self.failures:
            if failure.times > 0 and failure.method == call.method and failure.pattern.search(path):
                failure.times -= 1
                return JSONResponse(
                    {"message": "Injected failure with vendor text", "documentation_url": "x"},
                    status_code=failure.status,
                    headers=failure.headers,
                )
        if path.startswith("/app/"):
            return self._app_route(call)
        if not self._authorized(call.authorization):
            return JSONResponse({"message": "Bad credentials"}, status_code=401)
        return self._route(call)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        given = header[7:]
        if self.app_id is None:
            return given == self.token
        return given in self.installation_tokens

    def _app_jwt_ok(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer ") or self.app_public_key is None:
            return False
        try:
            claims = jwt.decode(header[7:], self.app_public_key, algorithms=["RS256"])
        except jwt.PyJWTError:
            return False
        return str(claims.get("iss")) == str(self.app_id)

    def _app_route(self, call: Call) -> Response:
        if not self._app_jwt_ok(call.authorization):
            return JSONResponse({"message": "A JSON web token could not be decoded"}, 401)
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", call.path)
        if call.method == "POST" and m:
            token = f"ghs_{secrets.token_hex(18)}"
            self.installation_tokens[token] = int(m.group(1))
            expires = datetime.now(UTC) + timedelta(seconds=self.installation_token_ttl)
            return JSONResponse(
                {"token": token, "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}, 201
            )
        return JSONResponse({"message": "Not Found"}, 404)

    def _route(self, c: Call) -> Response:
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/(\d+)/comments", c.path)
        if m and c.method == "GET":
            repo, number = f"{m.group(1)}/{m.group(2)}", int(m.group(3))
            items = sorted(self.comments_on(repo, number), key=lambda x: x["id"])
            per, page = int(c.query.get("per_page", 30)), int(c.query.get("page", 1))
            shown = items[(page - 1) * per : page * per]
            return JSONResponse([{k: v for k, v in i.items() if k != "history"} for i in shown])
        if m and c.method == "POST":
            repo, number = f"{m.group(1)}/{m.group(2)}", int(m.group(3))
            ident = self.seed_comment(repo, number, c.json["body"])
            return JSONResponse({"id": ident, "body": c.json["body"]}, 201)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/comments/(\d+)", c.path)
        if m and c.method == "PATCH":
            comment = self.comments.get(int(m.group(3)))
            if comment is None:
                return JSONResponse({"message": "Not Found"}, 404)
            comment["body"] = c.json["body"]
            comment["history"].append(c.json["body"])
            return JSONResponse({"id": comment["id"], "body": comment["body"]})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/deployments", c.path)
        if m and c.method == "POST":
            ident = next(self._ids)
            self.deployments[ident] = {"id": ident, "repo": f"{m.group(1)}/{m.group(2)}", **c.json}
            self.statuses[ident] = []
            return JSONResponse(self.deployments[ident], 201)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/deployments/(\d+)/statuses", c.path)
        if m and c.method == "POST":
            ident = int(m.group(3))
            if ident not in self.deployments:
                return JSONResponse({"message": "Not Found"}, 404)
            self.statuses[ident].append(dict(c.json))
            return JSONResponse({"id": next(self._ids), **c.json}, 201)
        if c.method == "POST" and c.path == "/user/repos":
            return self._create_repo(USER_LOGIN, c.json)
        m = re.fullmatch(r"/orgs/([^/]+)/repos", c.path)
        if m and c.method == "POST":
            return self._create_repo(m.group(1), c.json)
        m = re.fullmatch(r"/orgs/([^/]+)/installation", c.path)
        if m and c.method == "GET":
            return JSONResponse({"id": 77})
        return JSONResponse({"message": "Not Found"}, 404)

    def _create_repo(self, owner: str, body: dict[str, Any]) -> Response:
        full = f"{owner}/{body['name']}"
        if full in self.repos:
            return JSONResponse(
                {
                    "message": "Repository creation failed.",
                    "errors": [{"message": "name already exists on this account"}],
                },
                status_code=422,
            )
        if self.git_root is not None:
            bare = self.git_root / owner / f"{body['name']}.git"
            bare.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["git", "init", "--quiet", "--bare", str(bare)], check=True, capture_output=True
            )
        self.repos[full] = {
            "id": next(self._ids),
            "name": body["name"],
            "full_name": full,
            "private": body.get("private", False),
            "description": body.get("description"),
            "html_url": f"https://github.example/{full}",
            "clone_url": f"https://evil.example/{full}.git",  # never used by the service
            "default_branch": "main",
        }
        return JSONResponse(self.repos[full], 201)


@asynccontextmanager
async def serve_fake(fake: FakeGitHub) -> AsyncIterator[FakeGitHub]:
    """Serve `fake` on a free port in this event loop for the duration of the block."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app(), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 10
    while not server.started:
        if task.done():
            task.result()
        if time.monotonic() > deadline:
            raise RuntimeError("fake GitHub did not start")
        await asyncio.sleep(0.01)
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
