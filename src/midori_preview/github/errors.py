"""Domain errors of the GitHub integration, rendered by the app's one error handler."""

from __future__ import annotations

from typing import Any

from midori_preview.errors import PreviewError


class ReviewLinkNotFound(PreviewError):
    code = "review_link_not_found"
    status = 404


class PreviewClosed(PreviewError):
    """The pull request was closed (or the branch deleted): its review link is dead."""

    code = "preview_closed"
    status = 410


class PreviewGone(PreviewError):
    """The preview stopped (expired, stopped by an admin …) while the PR stays open."""

    code = "preview_stopped"
    status = 410


class PreviewBuilding(PreviewError):
    code = "preview_building"
    status = 503


class PreviewFailed(PreviewError):
    code = "preview_failed"
    status = 409


class GitHubUnconfigured(PreviewError):
    code = "github_not_configured"
    status = 503


class GitHubCallFailed(PreviewError):
    """A GitHub API call failed; `code` is ours (github_*), never GitHub's text."""

    status = 502

    def __init__(self, code: str, message: str, status: int = 502, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.code = code
        self.status = status


class RepoPushFailed(PreviewError):
    code = "repo_push_failed"
    status = 502


class WebhookRejected(PreviewError):
    """A signed delivery we cannot read (headers or JSON)."""

    code = "invalid_webhook"
    status = 400
