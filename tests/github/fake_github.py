"""A local fake of the GitHub REST API, served over real HTTP by uvicorn on 127.0.0.1.

It keeps the state the integration touches (issue comments, deployments and their statuses,
pull requests, collaborators, repositories — each with a bare git repository on disk, served
over git's smart HTTP under `/git/`, private ones only with a token), checks credentials (a
personal token, or a GitHub App's RS256 JWT and the installation tokens it hands out), records
every call, and answers with GitHub's documented shapes: comment objects with `user` and
`performed_via_github_app`, `Link` pagination, `x-ratelimit-*` headers on every answer, the
primary rate limit (403, remaining 0, `x-ratelimit-reset`) and the secondary one (403/429 with
GitHub's message, `retry-after` or not). Fails on demand: `fail("POST", r"/comments$", 502)`."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Callable
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

from tests.github.fake_git_http import GitHTTP
from tests.support.servers import free_port

USER_LOGIN = "octo-bot"  # the personal token's user
USER_ID = 9919
APP_SLUG = "midori-preview"
PRIMARY_MESSAGE = "API rate limit exceeded for user ID 9919."
SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID 1A2B:3C4D."
)
DOCS = "https://docs.github.com/rest"


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    json: Any
    authorization: str | None
    at: float = field(default_factory=time.monotonic)


@dataclass
class Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    headers: dict[str, str]
    message: str = "Injected failure with vendor text"
    when: Callable[[Call], bool] | None = None


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
    token_scopes: dict[str, tuple[list[str], Any]] = field(default_factory=dict)  # scoped ones
    failures: list[Failure] = field(default_factory=list)
    pulls: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    collaborators: set[tuple[str, str]] = field(default_factory=set)  # (repo, login)
    private_repos: set[str] = field(default_factory=set)
    remaining: int = 5000
    _ids: Any = field(default_factory=lambda: itertools.count(1001))
    git: GitHTTP | None = None

    def __post_init__(self) -> None:
        if self.git_root is not None:
            self.git = GitHTTP(self.git_root, self.token_accepted, self.private_repos)

    @property
    def git_base(self) -> str:
        """What GITHUB_CLONE_BASE_URL is set to: this fake's git smart-HTTP endpoint."""
        return f"{self.url}/git"

    # --- test controls ------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        pattern: str,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        when: Callable[[Call], bool] | None = None,
    ) -> None:
        """The next `times` calls matching method + path regex (+ `when`) answer `status`."""
        failure = Failure(method, re.compile(pattern), status, times, headers or {}, when=when)
        self.failures.append(failure)

    # --- GitHub's rate-limit answers --------------------------------------------------------

    def calls_to(self, method: str, pattern: str) -> list[Call]:
        rx = re.compile(pattern)
        return [c for c in self.calls if c.method == method and rx.search(c.path)]

    def comments_on(self, repo: str, number: int) -> list[dict[str, Any]]:
        return [c for c in self.comments.values() if c["repo"] == repo and c["issue"] == number]

    def primary_limit(self, method: str, pattern: str, *, reset_in: float, times: int = 1) -> None:
        """GitHub's primary rate limit: 403, remaining 0, the epoch second it resets."""
        reset = str(int(time.time() + reset_in))
        headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}
        self.failures.append(
            Failure(method, re.compile(pattern), 403, times, headers, PRIMARY_MESSAGE)
        )

    def secondary_limit(
        self,
        method: str,
        pattern: str,
        *,
        status: int = 403,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """GitHub's secondary rate limit: 403 (or 429) with its message, remaining NOT zero,
        `retry-after` only sometimes."""
        headers = {} if retry_after is None else {"retry-after": str(retry_after)}
        self.failures.append(
            Failure(method, re.compile(pattern), status, times, headers, SECONDARY_MESSAGE)
        )

    def seed_comment(
        self,
        repo: str,
        number: int,
        body: str,
        login: str = USER_LOGIN,
        *,
        app_id: int | None = None,
    ) -> int:
        """A comment as `login` (a person, or `app_id`'s bot: `<slug>[bot]`)."""
        ident: int = next(self._ids)
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.comments[ident] = {
            "id": ident,
            "repo": repo,
            "issue": number,
            "body": body,
            "history": [body],
            "user": {
                "login": login,
                "id": USER_ID if login == USER_LOGIN else 1000 + len(login),
                "type": "Bot" if app_id is not None else "User",
            },
            "performed_via_github_app": None
            if app_id is None
            else {"id": app_id, "slug": APP_SLUG, "name": "Midori Preview"},
            "created_at": now,
            "updated_at": now,
        }
        return ident

    def add_pull(
        self,
        repo: str,
        number: int,
        sha: str,
        *,
        ref: str = "hero-update",
        head_repo: str | None = None,
        author: str = "mona",
        state: str = "open",
        merged: bool = False,
        labels: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        """A pull request as `GET /repos/{repo}/pulls/{number}` returns it (the fields of note)."""
        head = head_repo
        pr = {
            "number": number,
            "state": state,
            "merged": merged,
            "updated_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "user": {"login": author, "type": "User"},
            "labels": [{"name": n} for n in labels],
            "author_association": "CONTRIBUTOR",
            "head": {
                "ref": ref,
                "sha": sha,
                "label": f"{(head or repo).split('/')[0]}:{ref}",
                "repo": None
                if head == ""
                else {"full_name": head or repo, "fork": bool(head and head != repo)},
            },
            "base": {"ref": "main", "repo": {"full_name": repo, "fork": False}},
        }
        self.pulls[(repo, number)] = pr
        return pr

    def token_accepted(self, token: str) -> bool:
        return token == self.token if self.app_id is None else token in self.installation_tokens

    # --- the app ------------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = []
        if self.git is not None:
            routes.append(Route("/git/{path:path}", self.git.handle, methods=["GET", "POST"]))
        routes.append(
            Route("/{path:path}", self.handle, methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
        )
        return Starlette(routes=routes)

    def _limit_headers(self) -> dict[str, str]:
        self.remaining = max(self.remaining - 1, 1)
        return {
            "x-ratelimit-limit": "5000",
            "x-ratelimit-remaining": str(self.remaining),
            "x-ratelimit-used": str(5000 - self.remaining),
            "x-ratelimit-reset": str(int(time.time()) + 3600),
            "x-ratelimit-resource": "core",
        }

    async def handle(self, request: Request) -> Response:
        res = await self._handle(request)
        for key, value in self._limit_headers().items():
            res.headers.setdefault(key, value)
        return res

    async def _handle(self, request: Request) -> Response:
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
            if (
                failure.times > 0
                and failure.method == call.method
                and failure.pattern.search(path)
                and (failure.when is None or failure.when(call))
            ):
                failure.times -= 1
                return JSONResponse(
                    {"message": failure.message, "documentation_url": DOCS},
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
        return self.token_accepted(header[7:])

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
            if isinstance(call.json, dict) and "repositories" in call.json:
                self.token_scopes[token] = (call.json["repositories"], call.json.get("permissions"))
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
            return self._paged(c, [self._comment_json(i) for i in items])
        if m and c.method == "POST":
            repo, number = f"{m.group(1)}/{m.group(2)}", int(m.group(3))
            login, app_id = self._actor(c.authorization)
            ident = self.seed_comment(repo, number, c.json["body"], login, app_id=app_id)
            return JSONResponse(self._comment_json(self.comments[ident]), 201)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/issues/comments/(\d+)", c.path)
        if m and c.method == "PATCH":
            comment = self.comments.get(int(m.group(3)))
            if comment is None:
                return JSONResponse({"message": "Not Found", "documentation_url": DOCS}, 404)
            comment["body"] = c.json["body"]
            comment["history"].append(c.json["body"])
            return JSONResponse(self._comment_json(comment))
        if c.method == "GET" and c.path == "/user":
            if self.app_id is not None:  # an installation token is no user
                return JSONResponse(
                    {
                        "message": "Resource not accessible by integration",
                        "documentation_url": DOCS,
                    },
                    403,
                )
            return JSONResponse({"login": USER_LOGIN, "id": USER_ID, "type": "User"})
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/pulls/(\d+)", c.path)
        if m and c.method == "GET":
            pr = self.pulls.get((f"{m.group(1)}/{m.group(2)}", int(m.group(3))))
            if pr is None:
                return JSONResponse({"message": "Not Found", "documentation_url": DOCS}, 404)
            return JSONResponse(pr)
        m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/collaborators/([^/]+)", c.path)
        if m and c.method == "GET":
            known = (f"{m.group(1)}/{m.group(2)}", m.group(3)) in self.collaborators
            return Response(status_code=204 if known else 404)
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

    def _actor(self, authorization: str | None) -> tuple[str, int | None]:
        """Who a call acts as: the token's user, or the App's bot for installation tokens."""
        if self.app_id is not None:
            return f"{APP_SLUG}[bot]", self.app_id
        return USER_LOGIN, None

    @staticmethod
    def _comment_json(comment: dict[str, Any]) -> dict[str, Any]:
        repo, number, ident = comment["repo"], comment["issue"], comment["id"]
        return {
            "id": ident,
            "node_id": f"IC_kwDO{ident}",
            "url": f"https://api.github.com/repos/{repo}/issues/comments/{ident}",
            "html_url": f"https://github.com/{repo}/pull/{number}#issuecomment-{ident}",
            "issue_url": f"https://api.github.com/repos/{repo}/issues/{number}",
            "body": comment["body"],
            "user": comment["user"],
            "created_at": comment["created_at"],
            "updated_at": comment["updated_at"],
            "author_association": "NONE" if comment["performed_via_github_app"] else "MEMBER",
            "performed_via_github_app": comment["performed_via_github_app"],
        }

    def _paged(self, c: Call, items: list[dict[str, Any]]) -> Response:
        """One page (`per_page` ≤ 100, default 30) and GitHub's `Link` header."""
        per = min(int(c.query.get("per_page", 30)), 100)
        page = int(c.query.get("page", 1))
        last = max((len(items) + per - 1) // per, 1)
        links = []
        url = f"{self.url}{c.path}?per_page={per}&page="
        if page < last:
            links += [f'<{url}{page + 1}>; rel="next"', f'<{url}{last}>; rel="last"']
        if page > 1:
            links += [f'<{url}1>; rel="first"', f'<{url}{page - 1}>; rel="prev"']
        headers = {"Link": ", ".join(links)} if links else {}
        return JSONResponse(items[(page - 1) * per : page * per], headers=headers)

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
