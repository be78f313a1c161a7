"""What callers see of a sandbox: its row read for its owner (404 otherwise) and the answers built
from it. Pure, apart from the one read."""

from __future__ import annotations

from midori_preview.db.models import Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.errors import SandboxNotFound
from midori_preview.previews.schemas import Created, PreviewStatus, StepError, Usage
from midori_preview.previews.states import SandboxStatus


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


def status_of(row: Sandbox, usage: Usage | None = None) -> PreviewStatus:
    """The status answer; the preview's URL and token only while it runs."""
    running = row.status == SandboxStatus.RUNNING
    return PreviewStatus(
        sandbox_id=row.id,
        project_id=row.project_id,
        status=row.status,
        reason=row.reason,
        preview_url=row.preview_url if running else None,
        preview_token=row.preview_token if running else None,
        open_url=row.open_url if running else None,
        created_at=row.created_at,
        ready_at=row.ready_at,
        last_heartbeat_at=row.last_heartbeat_at,
        expires_at=row.expires_at,
        error=StepError(
            step=row.error_step,
            code=row.error_code or "step_failed",
            message=row.error_message or "",
            exit_code=row.error_exit_code,
        )
        if row.error_step
        else None,
        logs_tail=list(row.logs_tail or []),
        usage=usage,
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
