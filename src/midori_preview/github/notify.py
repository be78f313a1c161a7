"""What GitHub shows of a preview: the pull request's one comment and the current deployment's
status. What GitHub *should* show is stored with the mapping first (`comment_body`,
`deploy_state` …, unsynced), then sent; a write that fails (GitHub down, rate limited) leaves
it unsynced and the reconcile job sends it again until GitHub matches. A GitHub failure never
stops the preview work: failures are logged, never raised."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from midori_preview.db.github import GitHubRepository
from midori_preview.db.models import GitHubPreview
from midori_preview.github.client import (
    GitHubClient,
    GitHubError,
    GitHubNotConfigured,
    GitHubNotFound,
)
from midori_preview.github.comments import MARKER, CommentState, render
from midori_preview.github.identity import Identity
from midori_preview.logging import get_logger

log = get_logger(__name__)


def environment_of(row: GitHubPreview) -> str:
    """The GitHub environment of a preview: one per PR (`preview/pr-7`), per branch
    (`preview/main`), so GitHub's environments page lists each one's deployments."""
    if row.pr_number is not None:
        return f"preview/pr-{row.pr_number}"
    return f"preview/{row.branch}"


class Notifier:
    """Writes the comment and deployment status of a mapping (callers hold its lock)."""

    def __init__(self, *, client: GitHubClient, store: GitHubRepository) -> None:
        self.client = client
        self.store = store
        self.identity = Identity(client)

    async def ok(self, call: Coroutine[Any, Any, Any]) -> bool:
        """A GitHub call whose failure must not stop the preview work: True when it worked."""
        try:
            await call
        except GitHubNotConfigured:
            return False
        except GitHubError as exc:
            log.warning("github.call_failed", code=exc.code, status=exc.status)
            return False
        return True

    # --- comment ----------------------------------------------------------------------------

    async def comment(
        self, row: GitHubPreview, state: CommentState, *, create: bool = True
    ) -> None:
        """Make `state` what the PR's comment should say, and say it."""
        if row.pr_number is None or not self.client.configured:
            return
        row.comment_body, row.comment_synced = render(state), False
        await self.store.update(row.repo, row.target, comment_body=row.comment_body,
                                comment_synced=False)  # fmt: skip
        await self.send_comment(row, create=create)

    async def send_comment(self, row: GitHubPreview, *, create: bool = True) -> bool:
        """Write the stored body to the PR's one comment: edit the known one, else our own one
        carrying the marker, else (only then) create it. True once GitHub has it."""
        body = row.comment_body
        if row.pr_number is None or body is None:
            return True
        inst = row.installation_id
        try:
            comment_id = row.comment_id
            if comment_id is None:
                comment_id = await self.client.find_comment(
                    row.repo, row.pr_number, MARKER, own=self.identity.is_own,
                    installation_id=inst,
                )  # fmt: skip
            if comment_id is not None:
                try:
                    await self.client.edit_comment(row.repo, comment_id, body, installation_id=inst)
                except GitHubNotFound:
                    comment_id = None  # deleted by someone: write a new one
            if comment_id is None and create:
                comment_id = await self.client.create_comment(
                    row.repo, row.pr_number, body, installation_id=inst
                )
        except GitHubError as exc:
            log.warning("github.comment_failed", repo=row.repo, code=exc.code, status=exc.status)
            if exc.retryable:
                return False  # kept: the reconcile job sends it again
            comment_id = row.comment_id  # GitHub refuses it for good: not re-sent forever
        row.comment_id, row.comment_synced = comment_id, True
        await self.store.update(
            row.repo, row.target, comment_id=comment_id, comment_synced=True, comment_body=body
        )
        return True

    # --- deployment -------------------------------------------------------------------------

    async def deploy(
        self, row: GitHubPreview, state: str, description: str, url: str | None = None
    ) -> None:
        """Make `state` what the current deployment should show, and show it (the deployment is
        created first when there is none yet)."""
        if not self.client.configured:
            return
        row.deploy_state, row.deploy_description, row.deploy_url = state, description, url
        row.deploy_synced = False
        await self.store.update(row.repo, row.target, deploy_state=state, deploy_synced=False,
                                deploy_description=description, deploy_url=url)  # fmt: skip
        await self.send_deploy(row)

    async def send_deploy(self, row: GitHubPreview) -> bool:
        """Send the stored deployment state. True once GitHub has it."""
        state = row.deploy_state
        if state is None or row.deploy_synced:
            return True
        inst = row.installation_id
        if row.deployment_id is None:
            if state == "inactive":  # nothing was deployed: nothing to retire
                return await self._deploy_synced(row)
            try:
                row.deployment_id = await self.client.create_deployment(
                    row.repo,
                    row.head_sha,
                    environment=environment_of(row),
                    description="Midori preview",
                    installation_id=inst,
                )
            except GitHubError as exc:
                log.warning("github.deployment_failed", repo=row.repo, code=exc.code)
                return False if exc.retryable else await self._deploy_synced(row)
            await self.store.update(row.repo, row.target, deployment_id=row.deployment_id)
        try:
            await self.client.deployment_status(
                row.repo,
                row.deployment_id,
                state,
                environment_url=row.deploy_url,
                description=row.deploy_description or "",
                installation_id=inst,
            )
        except GitHubError as exc:
            log.warning("github.call_failed", code=exc.code, status=exc.status)
            if exc.retryable:
                return False
        return await self._deploy_synced(row)

    async def _deploy_synced(self, row: GitHubPreview) -> bool:
        row.deploy_synced = True
        await self.store.update(row.repo, row.target, deploy_synced=True)
        return True

    async def status(
        self,
        repo: str,
        deployment_id: int,
        state: str,
        installation_id: int | None,
        description: str,
        url: str | None = None,
    ) -> bool:
        """One deployment status (best effort; replaced deployments are told only this way)."""
        return await self.ok(
            self.client.deployment_status(
                repo,
                deployment_id,
                state,
                environment_url=url,
                description=description,
                installation_id=installation_id,
            )
        )
