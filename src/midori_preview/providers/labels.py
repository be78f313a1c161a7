"""How the service marks the sandboxes it creates, at any provider, so that it can always find
what it owns, and only that: every sandbox carries the full label set, and listing with the
deployment's selector finds exactly this installation's sandboxes (not those of another one
sharing the provider account)."""

from __future__ import annotations

LABEL_MANAGED = "midori-preview"
LABEL_DEPLOYMENT = "midori-preview/deployment"
LABEL_SANDBOX_ID = "midori-preview/sandbox-id"
LABEL_USER_ID = "midori-preview/user-id"
LABEL_PROJECT_ID = "midori-preview/project-id"


def sandbox_labels(
    *, deployment: str, sandbox_id: str, user_id: str, project_id: str
) -> dict[str, str]:
    """The labels of one sandbox: ours, which deployment made it, our id, its user and project."""
    return {
        LABEL_MANAGED: "1",
        LABEL_DEPLOYMENT: deployment,
        LABEL_SANDBOX_ID: sandbox_id,
        LABEL_USER_ID: user_id,
        LABEL_PROJECT_ID: project_id,
    }


def owned_selector(deployment: str, *, sandbox_id: str | None = None) -> dict[str, str]:
    """Labels that select every sandbox `deployment` made (or the one with `sandbox_id`)."""
    selector = {LABEL_MANAGED: "1", LABEL_DEPLOYMENT: deployment}
    if sandbox_id is not None:
        selector[LABEL_SANDBOX_ID] = sandbox_id
    return selector
