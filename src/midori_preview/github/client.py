"""A small GitHub REST client on httpx: token or GitHub App auth (installation tokens cached until
shortly before they expire), bounded retries on rate limits, 5xx and transport errors only, and
its own error tree. Vendor text never leaves this module; tokens are never logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import jwt

from midori_preview.github.answers import (
    GitHubAuthFailed,
    GitHubError,
    GitHubNotConfigured,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubRejected,
    GitHubUnavailable,
    classify,
    parse_time,
    retry_hint,
)
from midori_preview.logging import get_logger
from midori_preview.retry import RetryPolicy

log = get_logger(__name__)
__all__ = [
    "AppCredentials",
    "GitHubAuthFailed",
    "GitHubClient",
    "GitHubError",
    "GitHubNotConfigured",
    "GitHubNotFound",
    "GitHubRateLimited",
    "GitHubRejected",
    "GitHubUnavailable",
]

API_VERSION = "2022-11-28"
PER_PAGE = 100
MAX_PAGES = 50


# --- auth -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppCredentials:
    app_id: int
    private_key: str
    installation_id: int | None = None


@dataclass(slots=True)
class _CachedToken:
    token: str
    expires_at: float  # epoch seconds


class GitHubClient:
    """One per process (built in the app's lifespan). Every method names the installation it
    acts for when App auth is used; with a token, `installation_id` is ignored."""

    def __init__(
        self,
        *,
        api_url: str,
        token: str | None = None,
        app: AppCredentials | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 1.0,
        max_wait: float = 30.0,
        secondary_wait: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self._token = token
        self._app = app
        self.max_wait = max_wait
        self.secondary_wait = secondary_wait
        self._strikes = 0  # rate limits in a row: a secondary limit's wait doubles each time
        self._paused_until = 0.0  # epoch seconds: no call is sent before (GitHub asked us)
        self._retry = RetryPolicy(
            attempts=max(attempts, 1), initial_backoff_seconds=backoff, max_backoff_seconds=max_wait
        )
        self._http = http or httpx.AsyncClient(timeout=timeout, trust_env=False)
        self._owns_http = http is None
        self._installation_tokens: dict[int, _CachedToken] = {}
        self._token_lock = asyncio.Lock()

    @property
    def configured(self) -> bool:
        return self._token is not None or self._app is not None

    @property
    def app_id(self) -> int | None:
        return self._app.app_id if self._app is not None else None

    @property
    def uses_app(self) -> bool:
        return self._token is None and self._app is not None

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # --- transport --------------------------------------------------------------------------

    def _should_retry(self, exc: BaseException) -> bool:
        if not isinstance(exc, GitHubError) or not exc.retryable:
            return False
        # A rate limit that resets later than we are willing to wait fails at once.
        return exc.retry_after is None or exc.retry_after <= self.max_wait

    async def _send(
        self,
        method: str,
        path: str,
        *,
        bearer: str,
        json: Any = None,
        params: dict[str, Any] | None = None,
        what: str,
    ) -> httpx.Response:
        retrying = self._retry.retrying(retry_if=self._should_retry, retry_after=retry_hint)
        async for attempt in retrying:
            with attempt:
                return await self._once(method, path, bearer, json, params, what)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(
        self,
        method: str,
        path: str,
        bearer: str,
        json: Any,
        params: dict[str, Any] | None,
        what: str,
    ) -> httpx.Response:
        paused = self._paused_until - time.time()
        if paused > 0:  # GitHub asked for quiet: sending now would only extend the limit
            raise GitHubRateLimited(f"GitHub rate limit hit ({what})", retry_after=paused)
        headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "midori-preview",
            "Authorization": f"Bearer {bearer}",
        }
        try:
            res = await self._http.request(
                method, self.api_url + path, json=json, params=params, headers=headers
            )
        except httpx.TimeoutException:
            log.warning("github.timeout", method=method, what=what)
            raise GitHubUnavailable(f"GitHub did not answer in time ({what})") from None
        except httpx.TransportError as exc:
            log.warning("github.unreachable", method=method, what=what, error=type(exc).__name__)
            raise GitHubUnavailable(f"GitHub is unreachable ({what})") from None
        log.debug("github.request", method=method, what=what, status=res.status_code)
        if res.is_success:
            self._strikes = 0
            return res
        wait = self.secondary_wait * 2.0 ** min(self._strikes, 6)
        err = classify(res, what, secondary_wait=wait)
        if isinstance(err, GitHubRateLimited) and err.retry_after is not None:
            self._strikes += 1
            self._paused_until = max(self._paused_until, time.time() + err.retry_after)
        log.warning(
            "github.error",
            method=method,
            what=what,
            status=res.status_code,
            code=err.code,
            retry_after=err.retry_after,
        )
        raise err

    async def request(
        self,
        method: str,
        path: str,
        *,
        installation_id: int | None = None,
        json: Any = None,
        params: dict[str, Any] | None = None,
        what: str = "request",
    ) -> Any:
        """One API call with the configured credentials; parsed JSON (None when empty)."""
        bearer = await self.access_token(installation_id)
        try:
            res = await self._send(method, path, bearer=bearer, json=json, params=params, what=what)
        except GitHubAuthFailed:
            if installation_id is not None or self.uses_app:
                self._installation_tokens.clear()  # revoked early: fetch anew next time
            raise
        return res.json() if res.content else None

    # --- credentials ------------------------------------------------------------------------

    def _app_jwt(self) -> str:
        assert self._app is not None
        now = int(time.time())
        claims = {"iat": now - 60, "exp": now + 540, "iss": str(self._app.app_id)}
        return jwt.encode(claims, self._app.private_key, algorithm="RS256")

    async def access_token(self, installation_id: int | None = None) -> str:
        """The token API calls and git pushes use: GITHUB_TOKEN, or an installation token."""
        if self._token is not None:
            return self._token
        if self._app is None:
            raise GitHubNotConfigured("GitHub is not configured (GITHUB_TOKEN or App).")
        inst = installation_id or self._app.installation_id
        if inst is None:
            raise GitHubNotConfigured("No GitHub App installation to act for.")
        async with self._token_lock:
            cached = self._installation_tokens.get(inst)
            if cached is not None and cached.expires_at - 60 > time.time():
                return cached.token
            res = await self._send(
                "POST",
                f"/app/installations/{inst}/access_tokens",
                bearer=self._app_jwt(),
                what="installation token",
            )
            body = res.json()
            token = body.get("token")
            if not isinstance(token, str) or not token:
                raise GitHubUnavailable("GitHub answered without an installation token")
            expires = parse_time(body.get("expires_at")) or time.time() + 3000
            self._installation_tokens[inst] = _CachedToken(token, expires)
            log.info("github.installation_token", installation_id=inst)
            return token

    async def clone_token(self, repo: str, installation_id: int | None) -> str:
        """A token that may read `repo`'s git contents: GITHUB_TOKEN, or an installation token
        scoped to that one repository with `contents: read` (fetched per clone, never cached:
        it ends with the clone's use, and the cached broad token is never handed to git)."""
        if self._token is not None:
            return self._token
        if self._app is None:
            raise GitHubNotConfigured("GitHub is not configured (GITHUB_TOKEN or App).")
        inst = installation_id or self._app.installation_id
        if inst is None:
            raise GitHubNotConfigured("No GitHub App installation to act for.")
        res = await self._send(
            "POST",
            f"/app/installations/{inst}/access_tokens",
            bearer=self._app_jwt(),
            json={"repositories": [repo.partition("/")[2]], "permissions": {"contents": "read"}},
            what="clone token",
        )
        token = res.json().get("token")
        if not isinstance(token, str) or not token:
            raise GitHubUnavailable("GitHub answered without an installation token")
        return token

    async def org_installation(self, org: str) -> int:
        """The App's installation id on an organization (App auth)."""
        if self._app is None:
            raise GitHubNotConfigured("No GitHub App configured.")
        res = await self._send(
            "GET", f"/orgs/{_seg(org)}/installation", bearer=self._app_jwt(), what="installation"
        )
        inst = res.json().get("id")
        if not isinstance(inst, int):
            raise GitHubUnavailable("GitHub answered without an installation id")
        return inst

    async def pull_request(
        self, repo: str, number: int, *, installation_id: int | None
    ) -> dict[str, Any]:
        """The pull request as `GET /repos/{repo}/pulls/{number}` returns it."""
        pr = await self.request(
            "GET",
            f"/repos/{_repo(repo)}/pulls/{number}",
            installation_id=installation_id,
            what="pull request",
        )
        if not isinstance(pr, dict):
            raise GitHubUnavailable("GitHub answered without a pull request")
        return pr

    async def is_collaborator(self, repo: str, login: str, *, installation_id: int | None) -> bool:
        """Whether `login` collaborates on `repo` (204) or not (404)."""
        try:
            await self.request(
                "GET",
                f"/repos/{_repo(repo)}/collaborators/{_seg(login)}",
                installation_id=installation_id,
                what="collaborator",
            )
        except GitHubNotFound:
            return False
        return True

    # --- comments ---------------------------------------------------------------------------

    async def find_comment(
        self,
        repo: str,
        number: int,
        marker: str,
        *,
        own: Callable[[dict[str, Any]], Awaitable[bool]],
        installation_id: int | None,
    ) -> int | None:
        """Id of the first comment on the issue/PR whose body carries `marker` and that `own`
        says we wrote (anyone can paste the marker). Pages follow GitHub's `Link` header."""
        path: str | None = f"/repos/{_repo(repo)}/issues/{number}/comments"
        params: dict[str, Any] | None = {"per_page": PER_PAGE}
        for _ in range(MAX_PAGES):
            if path is None:
                return None
            items, path = await self._page(path, params, installation_id, "list comments")
            params = None  # the next link carries them
            for item in items:
                if marker in str(item.get("body") or "") and await own(item):
                    found = item.get("id")
                    return found if isinstance(found, int) else None
        return None

    async def _page(
        self, path: str, params: dict[str, Any] | None, installation_id: int | None, what: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of a list: its objects and the path of the next page (`Link: rel="next"`,
        followed only on GitHub's own API host)."""
        bearer = await self.access_token(installation_id)
        res = await self._send("GET", path, bearer=bearer, params=params, what=what)
        body = res.json() if res.content else None
        items = [i for i in body if isinstance(i, dict)] if isinstance(body, list) else []
        nxt = res.links.get("next", {}).get("url")
        if not isinstance(nxt, str) or not nxt.startswith(self.api_url + "/"):
            return items, None
        return items, nxt.removeprefix(self.api_url)

    async def create_comment(
        self, repo: str, number: int, body: str, *, installation_id: int | None
    ) -> int:
        res = await self.request(
            "POST",
            f"/repos/{_repo(repo)}/issues/{number}/comments",
            json={"body": body},
            installation_id=installation_id,
            what="create comment",
        )
        return int(res["id"])

    async def edit_comment(
        self, repo: str, comment_id: int, body: str, *, installation_id: int | None
    ) -> None:
        await self.request(
            "PATCH",
            f"/repos/{_repo(repo)}/issues/comments/{comment_id}",
            json={"body": body},
            installation_id=installation_id,
            what="edit comment",
        )

    # --- deployments ------------------------------------------------------------------------

    async def create_deployment(
        self,
        repo: str,
        sha: str,
        *,
        environment: str,
        description: str,
        installation_id: int | None,
    ) -> int:
        res = await self.request(
            "POST",
            f"/repos/{_repo(repo)}/deployments",
            json={
                "ref": sha,
                "environment": environment,
                "transient_environment": True,
                "production_environment": False,
                "auto_merge": False,
                "required_contexts": [],
                "description": description[:140],
            },
            installation_id=installation_id,
            what="create deployment",
        )
        if not isinstance(res, dict) or not isinstance(res.get("id"), int):
            raise GitHubRejected("GitHub did not create the deployment")
        return int(res["id"])

    async def deployment_status(
        self,
        repo: str,
        deployment_id: int,
        state: str,
        *,
        environment_url: str | None = None,
        description: str | None = None,
        installation_id: int | None,
    ) -> None:
        body: dict[str, Any] = {"state": state, "auto_inactive": False}
        if environment_url:
            body["environment_url"] = environment_url
        if description:
            body["description"] = description[:140]
        await self.request(
            "POST",
            f"/repos/{_repo(repo)}/deployments/{deployment_id}/statuses",
            json=body,
            installation_id=installation_id,
            what="deployment status",
        )

    # --- repositories -----------------------------------------------------------------------

    async def create_repo(
        self,
        name: str,
        *,
        org: str | None,
        private: bool,
        description: str,
        installation_id: int | None,
    ) -> dict[str, Any]:
        path = f"/orgs/{_seg(org)}/repos" if org else "/user/repos"
        res = await self.request(
            "POST",
            path,
            json={"name": name, "private": private, "description": description, "auto_init": False},
            installation_id=installation_id,
            what="create repository",
        )
        if not isinstance(res, dict):
            raise GitHubRejected("GitHub did not create the repository")
        return res


def _seg(value: str) -> str:
    return quote(value, safe="")


def _repo(full_name: str) -> str:
    owner, _, name = full_name.partition("/")
    return f"{_seg(owner)}/{_seg(name)}"
