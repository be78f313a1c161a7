"""GitHub's answers as our errors: the client's error tree (retryable or not, never GitHub's own
text) and how a failed answer is classified — rate limits by GitHub's documented rules:

- primary: `x-ratelimit-remaining: 0` → wait until `x-ratelimit-reset` (epoch seconds);
- secondary: 429, or 403 whose message says "secondary rate limit" (or any rate limit) or that
  carries `retry-after` → `retry-after` when sent, else at least a minute, growing each time;
- any other 401/403: the credentials lack access (not retried)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx

from midori_preview.errors import ServiceError

# --- errors -----------------------------------------------------------------------------------


class GitHubError(ServiceError):
    """Base of GitHub failures: `code` is ours and safe to show; never GitHub's own text."""

    code = "github_error"
    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class GitHubUnavailable(GitHubError):
    """GitHub did not answer, or answered 5xx, past the retry budget."""

    code = "github_unavailable"
    retryable = True


class GitHubRateLimited(GitHubUnavailable):
    """GitHub's rate limit (429, or 403 with rate-limit headers)."""

    code = "github_rate_limited"


class GitHubRejected(GitHubError):
    """A 4xx answer: retrying will not help."""

    code = "github_rejected"


class GitHubNotFound(GitHubRejected):
    code = "github_not_found"


class GitHubAuthFailed(GitHubRejected):
    """401, or 403 without rate-limit headers: the credentials lack access."""

    code = "github_auth_failed"


class GitHubNotConfigured(GitHubError):
    """No GITHUB_TOKEN and no GitHub App configured (or no installation for the call)."""

    code = "github_not_configured"


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _message(res: httpx.Response) -> str:
    try:
        body = res.json()
    except ValueError:
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return message.lower() if isinstance(message, str) else ""


def rate_limit_wait(res: httpx.Response, secondary_wait: float) -> float | None:
    """How long GitHub asks us to wait, or None when the answer is no rate limit at all.
    `secondary_wait`: our wait for a secondary limit that names none (≥ a minute on GitHub)."""
    status = res.status_code
    if status not in (403, 429):
        return None
    retry_after = _seconds(res.headers.get("retry-after"))
    if res.headers.get("x-ratelimit-remaining") == "0":
        reset = _seconds(res.headers.get("x-ratelimit-reset"))
        if retry_after is not None:
            return retry_after
        return max(reset - time.time(), 0.0) + 1.0 if reset is not None else secondary_wait
    if retry_after is not None:
        return retry_after
    if status == 429 or "rate limit" in _message(res):
        return secondary_wait
    return None


def classify(res: httpx.Response, what: str, *, secondary_wait: float = 60.0) -> GitHubError:
    """Our error for a non-2xx answer (GitHub's body is not passed on)."""
    status = res.status_code
    wait = rate_limit_wait(res, secondary_wait)
    if wait is not None:
        return GitHubRateLimited(f"GitHub rate limit hit ({what})", status=status, retry_after=wait)
    if status >= 500:
        return GitHubUnavailable(
            f"GitHub answered {status} ({what})",
            status=status,
            retry_after=_seconds(res.headers.get("retry-after")),
        )
    if status in (401, 403):
        return GitHubAuthFailed(f"GitHub refused the credentials ({what})", status=status)
    if status == 404:
        return GitHubNotFound(f"not found on GitHub ({what})", status=status)
    return GitHubRejected(f"GitHub rejected the request ({what}, {status})", status=status)


def retry_hint(exc: BaseException) -> float | None:
    """GitHub's own wait (retry-after, the primary reset, our secondary wait), when it gave one."""
    return exc.retry_after if isinstance(exc, GitHubError) else None


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
