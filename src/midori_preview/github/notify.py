"""What GitHub shows of a preview: the pull request's one comment and its deployment statuses.
Every write here is best effort (a GitHub failure never stops the preview work): failures are
logged and answered with None."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from midori_preview.db.github import GitHubRepository
from midori_preview.db.models import GitHubPreview
from midori_preview.github.client import (
    GitHubClient,
    GitHubError,
    GitHubNotConfigured,
    GitHubNotFound,
)
from midori_preview.github.comments import MARKER, CommentState, render
from midori_preview.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")


class Notifier:
    """Writes the comment and deployment statuses of a preview row (callers hold its lock)."""

    def __init__(self, *, client: GitHubClient, store: GitHubRepository) -> None:
        self.client = client
        self.store = store

    async def call(self, call: Coroutine[Any, Any, T]) -> T | None:
        """A GitHub call whose failure must not stop the preview work (logged, None)."""
        try:
            return await call
        except GitHubNotConfigured:
            return None
        except GitHubError as exc:
            log.warning("github.call_failed", code=exc.code, status=exc.status)
            return None

    async def create_deployment(
        self, repo: str, sha: str, installation_id: int | None
    ) -> int | None:
        return await self.call(
            self.client.create_deployment(
                repo, sha, description="Midori preview", installation_id=installation_id
            )
        )

    async def status(
        self,
        repo: str,
        deployment_id: int,
        state: str,
        installation_id: int | None,
        description: str,
        url: str | None = None,
    ) -> None:
        await self.call(
            self.client.deployment_status(
                repo,
                deployment_id,
                state,
                environment_url=url,
                description=description,
                installation_id=installation_id,
            )
        )

    async def comment(
        self, row: GitHubPreview, state: CommentState, *, create: bool = True
    ) -> None:
        """Write the PR's one comment: edit the known one, else the one carrying the marker,
        else (only then) create it. Callers hold the PR's lock, so two never race."""
        if row.pr_number is None or not self.client.configured:
            return
        body = render(state)
        inst = row.installation_id
        try:
            comment_id = row.comment_id
            if comment_id is None:
                comment_id = await self.client.find_comment(
                    row.repo, row.pr_number, MARKER, installation_id=inst
                )
            if comment_id is not None:
                try:
                    await self.client.edit_comment(row.repo, comment_id, body, installation_id=inst)
                except GitHubNotFound:
                    comment_id = None  # deleted by someone: write a new one
            if comment_id is None:
                if not create:
                    return
                comment_id = await self.client.create_comment(
                    row.repo, row.pr_number, body, installation_id=inst
                )
        except GitHubError as exc:
            log.warning("github.comment_failed", repo=row.repo, code=exc.code, status=exc.status)
            return
        if comment_id != row.comment_id:
            await self.store.update(row.repo, row.target, comment_id=comment_id)
