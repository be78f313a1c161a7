"""The GitHub Actions trigger (issue 11 §8): the Midori workflow's
`curl -X POST -H 'Authorization: Bearer …' -d '{"repo": …, "prNumber": …}'` on
`pull_request` [opened, synchronize, closed] drives previews exactly like the webhook: the PR is
read from the API (head, state, fork), built, rebuilt and torn down; a re-run acts once; a wrong
or missing token is refused, and with no token configured the path is the webhook's alone."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Backend
from tests.github.conftest import HOOK, Origin, gh_app, gh_settings, sandboxes, settle, site
from tests.github.fake_github import FakeGitHub

REPO = "octo-org/site"
TOKEN = "preview-api-token-7c1e"


async def trigger(
    client: httpx.AsyncClient, body: str, token: str | None = TOKEN
) -> httpx.Response:
    """As curl -d sends it: the JSON in a form-encoded request."""
    headers = {"Content-Type": "application/x-www-form-urlencoded", "User-Agent": "curl/8.5.0"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await client.post(HOOK, content=body.encode(), headers=headers)


async def test_actions_trigger_opens_synchronizes_and_closes(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    first, second = origin.make(REPO, site("from actions"), site("from actions, v2"))
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_actions_token=TOKEN
    )
    body = '{"repo":"octo-org/site","prNumber":7}'
    async with gh_app(settings) as running:
        pr = fake_github.add_pull(REPO, 7, first)
        pr["updated_at"] = "2026-01-12T10:00:00Z"
        res = await trigger(running.client, body)
        assert (res.status_code, res.json()) == (202, {"outcome": "accepted", "reason": None})
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"] and first[:7] in comment["body"]
        again = await trigger(running.client, body)  # the workflow re-run: acts once
        assert again.json()["outcome"] == "duplicate"

        pr["head"]["sha"], pr["updated_at"] = second, "2026-01-12T10:05:00Z"
        await trigger(running.client, body)
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"] and second[:7] in comment["body"]

        pr["state"], pr["updated_at"] = "closed", "2026-01-12T10:10:00Z"
        await trigger(running.client, body)
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert "was closed" in comment["body"]
        assert [(r.status, r.reason) for r in await sandboxes(running)] == [
            ("stopped", "replaced"),
            ("stopped", "pr_closed"),
        ]
        assert fake_github.calls_to("GET", r"^/repos/octo-org/site/pulls/7$")


async def test_actions_trigger_refuses_what_it_should(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    origin.make(REPO, site("x"))
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_actions_token=TOKEN
    )
    async with gh_app(settings) as running:
        body = '{"repo":"octo-org/site","prNumber":7}'
        for token in ("wrong", "", TOKEN + "x"):
            res = await trigger(running.client, body, token)
            assert res.status_code == 401, token
            assert TOKEN not in res.text
        res = await trigger(running.client, body)
        assert res.status_code == 404 and res.json()["error"]["code"] == "github_not_found"
        for bad in ('{"repo":"../x","prNumber":7}', '{"repo":"octo-org/site"}', "nope"):
            res = await trigger(running.client, bad)
            assert res.status_code == 400, bad
        res = await trigger(running.client, '{"repo":"elsewhere/site","prNumber":7}')
        assert res.json() == {"outcome": "ignored", "reason": "not_allowlisted"}
        await settle(running)
        assert await sandboxes(running) == []
    # No token configured: a bearer request is just an unsigned delivery.
    plain = gh_settings(tmp_path / "off", Backend("embedded", None, None), fake_github, origin)
    async with gh_app(plain) as running:
        res = await trigger(running.client, '{"repo":"octo-org/site","prNumber":7}')
        assert res.status_code == 401
