"""The GitHub client against the fake API: rate limits and 5xx are retried with bounded waits
(Retry-After / X-RateLimit-Reset honoured), 4xx never; errors carry our codes, not GitHub's
text; App installation tokens are cached until shortly before they expire; no token is logged."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from midori_preview.github.client import (
    AppCredentials,
    GitHubAuthFailed,
    GitHubClient,
    GitHubError,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubRejected,
    GitHubUnavailable,
)
from midori_preview.logging import configure_logging
from tests.github.fake_github import FakeGitHub, free_port, serve_fake

REPO = "octo-org/site"
COMMENTS = r"/issues/7/comments$"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGitHub]:
    async with serve_fake(FakeGitHub()) as served:
        yield served


def client_for(fake: FakeGitHub, **kw: object) -> GitHubClient:
    options: dict[str, object] = {"backoff": 0.01, "max_wait": 2.0, "attempts": 4}
    options.update(kw)
    return GitHubClient(api_url=fake.url, token=fake.token, **options)  # type: ignore[arg-type]


async def test_retryable_answers_are_retried_then_succeed(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.fail("POST", COMMENTS, 502, times=2)
    fake.fail("POST", COMMENTS, 429, headers={"Retry-After": "0"})
    fake.fail(
        "POST",
        COMMENTS,
        403,
        headers={"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(time.time()))},
    )
    with pytest.raises(GitHubUnavailable):  # 4 attempts, all failing
        await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert len(fake.calls_to("POST", COMMENTS)) == 4
    ident = await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert fake.comments[ident]["body"] == "hi"
    await client.aclose()


async def test_retry_after_is_honoured(fake: FakeGitHub) -> None:
    client = client_for(fake)
    fake.fail("POST", COMMENTS, 429, headers={"Retry-After": "1"})
    started = time.monotonic()
    await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert time.monotonic() - started >= 0.9
    assert len(fake.calls_to("POST", COMMENTS)) == 2
    await client.aclose()


@pytest.mark.parametrize(
    ("status", "headers", "error"),
    [
        (422, {}, GitHubRejected),
        (404, {}, GitHubNotFound),
        (401, {}, GitHubAuthFailed),
        (403, {}, GitHubAuthFailed),  # a 403 without rate-limit headers is not a rate limit
        # A rate limit resetting in an hour is past max_wait: fail now, do not sleep an hour.
        (403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "9999999999"}, GitHubRateLimited),
        (429, {"Retry-After": "3600"}, GitHubRateLimited),
    ],
)
async def test_final_answers_are_not_retried(
    fake: FakeGitHub, status: int, headers: dict[str, str], error: type[GitHubError]
) -> None:
    client = client_for(fake)
    fake.fail("POST", COMMENTS, status, headers=headers)
    with pytest.raises(error) as caught:
        await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert len(fake.calls_to("POST", COMMENTS)) == 1
    assert "vendor text" not in str(caught.value) and caught.value.status == status
    await client.aclose()


async def test_unreachable_github_is_retried_then_unavailable() -> None:
    client = GitHubClient(
        api_url=f"http://127.0.0.1:{free_port()}", token="t", backoff=0.01, attempts=3
    )
    with pytest.raises(GitHubUnavailable) as caught:
        await client.create_comment(REPO, 7, "hi", installation_id=None)
    assert caught.value.code == "github_unavailable"
    await client.aclose()


async def test_installation_tokens_are_cached_until_they_expire(
    capfd: pytest.CaptureFixture[str],
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    configure_logging("DEBUG")
    fake = FakeGitHub(app_id=5, app_public_key=public)
    async with serve_fake(fake):
        client = GitHubClient(
            api_url=fake.url, app=AppCredentials(5, pem, installation_id=9), backoff=0.01
        )
        for _ in range(3):
            await client.create_comment(REPO, 7, "hi", installation_id=None)
        await client.create_comment(REPO, 7, "hi", installation_id=10)
        issued = fake.calls_to("POST", r"^/app/installations/\d+/access_tokens$")
        assert [c.path for c in issued] == [
            "/app/installations/9/access_tokens",
            "/app/installations/10/access_tokens",
        ]
        # A token GitHub says expires within the safety margin is not reused.
        fake.installation_token_ttl = 30
        short = GitHubClient(api_url=fake.url, app=AppCredentials(5, pem, 11), backoff=0.01)
        for _ in range(2):
            await short.create_comment(REPO, 7, "hi", installation_id=None)
        assert len(fake.calls_to("POST", r"^/app/installations/11/")) == 2
        # A revoked token (401) is dropped and fetched again on the next call.
        issued_tokens = list(fake.installation_tokens)
        fake.installation_tokens.clear()
        with pytest.raises(GitHubAuthFailed):
            await client.create_comment(REPO, 7, "hi", installation_id=None)
        await client.create_comment(REPO, 7, "hi", installation_id=None)
        await client.aclose()
        await short.aclose()
    out, err = capfd.readouterr()
    assert "github.installation_token" in err
    for token in [*issued_tokens, *fake.installation_tokens, pem.splitlines()[1]]:
        assert token not in out and token not in err
