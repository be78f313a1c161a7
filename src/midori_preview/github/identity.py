"""Who the service is on GitHub, to tell its own comment from anyone else's: with App auth, a
comment made through our App (`performed_via_github_app.id`); with a token, one whose author is
the token's user (`GET /user`, asked once per process). The hidden marker alone proves nothing:
anyone can paste it."""

from __future__ import annotations

from typing import Any

from midori_preview.github.client import GitHubClient, GitHubUnavailable


class Identity:
    def __init__(self, client: GitHubClient) -> None:
        self.client = client
        self._login: str | None = None

    async def login(self) -> str:
        """The login GITHUB_TOKEN acts as."""
        if self._login is None:
            user = await self.client.request("GET", "/user", what="user")
            login = user.get("login") if isinstance(user, dict) else None
            if not isinstance(login, str) or not login:
                raise GitHubUnavailable("GitHub answered without a login")
            self._login = login
        return self._login

    async def is_own(self, comment: dict[str, Any]) -> bool:
        """Whether this service wrote `comment`."""
        if self.client.uses_app:
            via = comment.get("performed_via_github_app")
            return isinstance(via, dict) and str(via.get("id")) == str(self.client.app_id)
        user = comment.get("user")
        login = user.get("login") if isinstance(user, dict) else None
        return isinstance(login, str) and login.lower() == (await self.login()).lower()
