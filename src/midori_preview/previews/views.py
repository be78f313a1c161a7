"""What callers see of a sandbox: its row read for its owner (404 otherwise) and the answers built
from it. Pure, apart from the one read."""

from __future__ import annotations

from dataclasses import dataclass, field

from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.status_rows import StatusRow
from midori_preview.errors import SandboxNotFound
from midori_preview.gateway.labels import PreviewLinks
from midori_preview.previews.schemas import Created, PreviewStatus, StepError, Usage
from midori_preview.previews.states import LIVE, SandboxStatus
from midori_preview.providers.base import Upstream


async def owned_row(sandboxes: SandboxRepository, sandbox_id: str, user_id: str | None) -> Sandbox:
    """The row, if `user_id` owns it (None: any owner); someone else's is as unknown as none."""
    row = (
        await sandboxes.get(sandbox_id)
        if user_id is None
        else await sandboxes.get_for_user(sandbox_id, user_id)
    )
    if row is None:
        raise SandboxNotFound("No such sandbox.", sandboxId=sandbox_id)
    return row


def error_of(row: Sandbox | StatusRow) -> StepError | None:
    """How the build failed, as callers see it (our code and message, never vendor text)."""
    if not row.error_step:
        return None
    return StepError(
        step=row.error_step,
        code=row.error_code or "step_failed",
        message=row.error_message or "",
        exit_code=row.error_exit_code,
    )


def status_of(
    row: Sandbox | StatusRow, links: PreviewLinks, usage: Usage | None = None
) -> PreviewStatus:
    """The status answer; the preview's links and token while it is live (building or running:
    a building preview's link shows its build, then the site)."""
    live = row.status in LIVE and row.preview_token is not None
    token = row.preview_token if live else None
    return PreviewStatus(
        sandbox_id=row.id,
        project_id=row.project_id,
        status=row.status,
        reason=row.reason,
        preview_url=links.preview_url(row.id, row.port) if token else None,
        preview_token=token,
        open_url=links.open_url(row.id, row.port, token, row.open_url_expires_at or row.expires_at)
        if token
        else None,
        created_at=row.created_at,
        ready_at=row.ready_at,
        last_heartbeat_at=row.last_heartbeat_at,
        expires_at=row.expires_at,
        error=error_of(row),
        logs_tail=list(row.logs_tail or []),
        usage=usage,
        version=row.version or 1,
        updated_at=row.source_updated_at,
    )


@dataclass(frozen=True, slots=True)
class HostView:
    """What the preview gateway needs of a sandbox: its state, our credential for it and where
    its server is. The token and the upstream are secrets: never in an answer or a log."""

    sandbox_id: str
    status: SandboxStatus
    reason: str | None
    port: int
    provider_id: str | None
    token: str | None = field(repr=False)
    upstream: Upstream | None = field(repr=False)
    error: StepError | None = None
    logs_tail: tuple[str, ...] = ()
    version: int = 1


def host_view_of(row: Sandbox) -> HostView:
    """The gateway's view of `row` (the upstream as the pipeline stored it, if it did)."""
    upstream = (
        Upstream(row.upstream_url, dict(row.upstream_headers or {})) if row.upstream_url else None
    )
    return HostView(
        sandbox_id=row.id,
        status=row.status,
        reason=row.reason,
        port=row.port,
        provider_id=row.provider_id,
        token=row.preview_token,
        upstream=upstream,
        error=error_of(row),
        logs_tail=tuple(row.logs_tail or ()),
        version=row.version or 1,
    )


def created_of(row: Sandbox, heartbeat_interval_seconds: int) -> Created:
    """The answer to a create: where to follow the build."""
    return Created(
        sandbox_id=row.id,
        project_id=row.project_id,
        status=row.status,
        status_url=f"/api/preview/daytona/status?sandboxId={row.id}",
        events_url=f"/api/preview/daytona/events?sandboxId={row.id}",
        heartbeat_interval_seconds=heartbeat_interval_seconds,
    )
