"""A failed write to GitHub is repaired (issue 11 §4): what GitHub should show (the comment's
body, the deployment's state) is kept with the mapping, and the reconcile job re-sends it until
GitHub has it — a preview marked ready whose comment edit and `success` status both failed ends
up "ready" on GitHub, and once it matches nothing more is sent."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Backend
from tests.github.conftest import Origin, deliver, gh_app, gh_settings, pr_payload, settle, site
from tests.github.fake_github import Call, FakeGitHub

REPO = "octo-org/site"


def ready_edit(call: Call) -> bool:
    return "is ready" in str((call.json or {}).get("body"))


def success_status(call: Call) -> bool:
    return (call.json or {}).get("state") == "success"


async def test_failed_comment_edit_and_status_are_resent_until_github_matches(
    tmp_path: Path, pg_backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("v1"))[0]
    # Every attempt of the "ready" edit and of the "success" status fails (GitHub down).
    fake_github.fail("PATCH", r"/issues/comments/\d+$", 502, times=99, when=ready_edit)
    fake_github.fail("POST", r"/statuses$", 502, times=99, when=success_status)
    settings = gh_settings(tmp_path, pg_backend, fake_github, origin, github_retry_attempts=2)
    async with gh_app(settings) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert "Building" in comment["body"]  # what the PR showed, while the preview was ready
        [dep] = fake_github.deployments.values()
        assert [s["state"] for s in fake_github.statuses[dep["id"]]] == ["in_progress"]

        assert await running.services.github.reconcile() == 1  # still down: kept, not lost
        assert "Building" in fake_github.comments_on(REPO, 7)[0]["body"]

        fake_github.failures.clear()  # GitHub is back
        assert await running.services.github.reconcile() == 1
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"]
        assert [s["state"] for s in fake_github.statuses[dep["id"]]] == ["in_progress", "success"]
        calls = len(fake_github.calls)
        assert await running.services.github.reconcile() == 0  # GitHub matches: nothing sent
        assert len(fake_github.calls) == calls


async def test_a_deployment_that_could_not_be_created_is_created_later(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("v1"))[0]
    fake_github.fail("POST", r"/deployments$", 503, times=99)
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_retry_attempts=1
    )
    async with gh_app(settings) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
        assert fake_github.deployments == {}
        fake_github.failures.clear()
        assert await running.services.github.reconcile() == 1
        [dep] = fake_github.deployments.values()
        assert [s["state"] for s in fake_github.statuses[dep["id"]]] == ["success"]
