"""The GitHub Actions trigger: a workflow on `pull_request` posts `{"repo", "prNumber"}` with a
bearer token; the service reads the pull request from the API (state, head commit, fork or not,
author, labels) and hands it to the webhook's own decision as a `pull_request` event — so it
does exactly what the webhook does, closing included. Each (PR, head, state) acts once, like a
delivery: a re-run of a workflow whose work failed runs again."""

from __future__ import annotations

import hashlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ActionsTrigger(BaseModel):
    """The body the Midori workflow posts (see the README's workflow file)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    repo: str = Field(max_length=140, examples=["octo-org/site"])
    pr_number: int = Field(gt=0, lt=2**31, examples=[7])


def event_of(repo: str, pr: dict[str, Any]) -> dict[str, Any]:
    """The `pull_request` event this state of the PR amounts to (as the webhook would see it)."""
    action = "synchronize" if pr.get("state") == "open" else "closed"
    return {"action": action, "pull_request": pr, "repository": {"full_name": repo}}


def delivery_id_of(repo: str, pr: dict[str, Any]) -> str:
    """A stable id per (repository, PR, head commit, state): a re-run is a redelivery."""
    head = pr.get("head")
    head = head if isinstance(head, dict) else {}
    raw = f"{repo.lower()}:{pr.get('number')}:{head.get('sha')}:{pr.get('state')}"
    return "actions-" + hashlib.sha256(raw.encode()).hexdigest()[:40]
