"""GitHub's rate limits by GitHub's rules (issue 11 §3), against the fake's real answers: a
secondary limit (403 with GitHub's message, remaining not 0, no retry-after) is a rate limit —
not an auth failure: retried after our secondary wait, growing while it lasts, App tokens kept;
`retry-after` is honoured; the primary limit waits for `x-ratelimit-reset`; a wait longer than
we are willing to spend fails at once and nothing is sent until it is over."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator

import pytest

from midori_preview.github.client import (
    AppCredentials,
    GitHubAuthFailed,
    GitHubClient,
    GitHubRateLimited,
)
from tests.github.conftest import app_keys
from tests.github.fake_github import FakeGitHub, serve_fake

REPO = "octo-org/site"
COMMENTS = r"/issues/7/comments$"
BASE = 0.2  # our secondary wait in these tests (GitHub's minute, scaled down)


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    async with serve_fake(FakeGitHub()) as served:
        yield served


def client_for(fake: FakeGitHub, **kw: object) -> GitHubClient:
    options: dict[str, object] = {
        "backoff": 0.01,
        "max_wait": 5.0,
        "attempts": 4,
        "secondary_wait": BASE,
    }
    options.update(kw)
    return GitHubClient(api_url=fake.url, token=fake.token, **options)  # type: ignore[arg-type]


def gaps(fake: FakeGitHub, pattern: str) -> list[float]:
    calls = fake.calls_to("POST", pattern)
    return [b.at - a.at for a, b in itertools.pairwise(calls)]


async def test_secondary_limit_is_retried_after_a_growing_wait(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.secondary_limit("POST", COMMENTS, times=2)
    ident = await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert fake.comments[ident]["body"] == "hi"
    first, second = gaps(fake, COMMENTS)
    assert first >= BASE and second >= 2 * BASE  # at least the wait, doubled the 2nd time
    await client.aclose()


async def test_secondary_429_and_retry_after_are_honoured(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.secondary_limit("POST", COMMENTS, status=429, retry_after=1)
    await client.create_comment(REPO, 7, "hi", installation_id=None)
    [gap] = gaps(fake, COMMENTS)
    assert gap >= 1.0
    await client.aclose()


async def test_primary_limit_waits_for_the_reset(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.primary_limit("POST", COMMENTS, reset_in=2)
    started = time.time()
    await client.create_comment(REPO, 7, "hi", installation_id=None)
    [limited, ok] = fake.calls_to("POST", COMMENTS)
    reset = int(started + 2)  # the fake's reset second, rounded down as GitHub's is
    assert ok.at - limited.at >= reset - started - 0.05
    await client.aclose()


async def test_a_wait_past_our_budget_fails_at_once_and_sends_nothing_meanwhile(
    fake: FakeGitHub,
) -> None:
    client = client_for(fake, secondary_wait=120.0, max_wait=2.0)
    fake.secondary_limit("POST", COMMENTS)
    with pytest.raises(GitHubRateLimited) as caught:
        await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert caught.value.retry_after is not None and caught.value.retry_after >= 60
    assert caught.value.retryable
    with pytest.raises(GitHubRateLimited):
        await client.edit_comment(REPO, 1, "again", installation_id=None)
    assert len(fake.calls) == 1  # the second call never reached GitHub
    await client.aclose()


async def test_a_real_403_is_still_an_auth_failure(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.fail("POST", COMMENTS, 403)  # "Resource not accessible": remaining > 0, no limit text
    with pytest.raises(GitHubAuthFailed):
        await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert len(fake.calls_to("POST", COMMENTS)) == 1
    await client.aclose()


async def test_secondary_limit_keeps_the_app_tokens() -> None:
    pem, public = app_keys()
    async with serve_fake(FakeGitHub(app_id=5, app_public_key=public)) as fake:
        client = GitHubClient(
            api_url=fake.url,
            app=AppCredentials(5, pem, 77),
            backoff=0.01,
            max_wait=5.0,
            secondary_wait=BASE,
        )
        await client.create_comment(REPO, 7, "one", installation_id=77)
        fake.secondary_limit("POST", COMMENTS)
        await client.create_comment(REPO, 7, "two", installation_id=77)
        assert len(fake.calls_to("POST", r"/access_tokens$")) == 1  # not cleared
        await client.aclose()
