"""The service driven with GitHub's own webhook payloads (octokit/webhooks' examples, unchanged
but for the head commit and timestamps) against the fake GitHub answering with GitHub's shapes,
the repository served over git's smart HTTP: ping, pull_request opened → synchronize → closed
(not merged) → reopened → closed (merged), a PR whose head repository is gone (`head.repo:
null`), and pushes (a tag, a new branch)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from tests.conftest import Backend
from tests.github.conftest import Origin, deliver, gh_app, gh_settings, sandboxes, settle, site
from tests.github.fake_github import FakeGitHub

OCTOKIT = Path(__file__).parent / "payloads" / "octokit"
REPO = "Codertocat/Hello-World"  # the repository of every octokit example
NUMBER = 2  # the pull request of octokit's pull_request examples


def octokit(name: str) -> dict[str, Any]:
    return dict(json.loads((OCTOKIT / f"{name}.json").read_text()))


def pr_event(action: str, sha: str, updated_at: str, *, merged: bool = False) -> dict[str, Any]:
    body = copy.deepcopy(octokit(f"pull_request.{'closed' if action == 'closed' else action}"))
    pr = body["pull_request"]
    pr["head"]["sha"] = sha
    pr["updated_at"] = updated_at
    if merged:
        pr.update(merged=True, merged_at=updated_at, merge_commit_sha="c" * 40)
    return body


def states(fake: FakeGitHub) -> list[str]:
    [comment] = fake.comments_on(REPO, NUMBER)
    words = [("is ready", "ready"), ("Building", "building"), ("failed", "failed")]
    words += [("was closed", "closed"), ("was stopped", "stopped")]
    return [next(s for w, s in words if w in body) for body in comment["history"]]


async def test_octokit_payloads_drive_a_pull_requests_life(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    first, second = origin.make(REPO, site("first"), site("second"), branch="master")
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_repo_allowlist=["Codertocat/*"],
    )
    async with gh_app(settings) as running:
        res = await deliver(running.client, "ping", octokit("ping"))
        assert (res.status_code, res.json()) == (202, {"outcome": "ignored", "reason": "event"})

        steps = [
            ("opened", first, "2026-01-10T10:00:00Z", False, "ready"),
            ("synchronize", second, "2026-01-10T10:05:00Z", False, "ready"),
            ("closed", second, "2026-01-10T10:10:00Z", False, "closed"),
            ("reopened", second, "2026-01-10T10:15:00Z", False, "ready"),
            ("closed", second, "2026-01-10T10:20:00Z", True, "closed"),
        ]
        for action, sha, at, merged, expected in steps:
            res = await deliver(
                running.client, "pull_request", pr_event(action, sha, at, merged=merged)
            )
            assert res.json()["outcome"] == "accepted", (action, res.json())
            await settle(running)
            assert states(fake_github)[-1] == expected, (action, states(fake_github))
        assert len(fake_github.comments_on(REPO, NUMBER)) == 1
        rows = await sandboxes(running)
        assert [r.status for r in rows] == ["stopped"] * 3
        assert [r.reason for r in rows] == ["replaced", "pr_closed", "pr_closed"]


async def test_head_repository_gone_and_pushes(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    [sha] = origin.make(REPO, site("master"), branch="master")
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_repo_allowlist=["Codertocat/*"],
        github_push_branches=["master"],
    )
    async with gh_app(settings) as running:
        gone = pr_event("opened", sha, "2026-01-10T10:00:00Z")
        gone["pull_request"]["head"]["repo"] = None  # the fork was deleted
        res = await deliver(running.client, "pull_request", gone)
        assert res.json() == {"outcome": "ignored", "reason": "invalid_head_repository"}
        closed = pr_event("closed", sha, "2026-01-10T10:01:00Z")
        closed["pull_request"]["head"]["repo"] = None
        res = await deliver(running.client, "pull_request", closed)
        assert res.status_code == 202

        tag = await deliver(running.client, "push", octokit("push.with-installation"))
        assert tag.json() == {"outcome": "ignored", "reason": "not_a_branch"}
        push = octokit("push.new-branch")
        push["after"] = push["head_commit"]["id"] = sha
        res = await deliver(running.client, "push", push)
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        [deployment] = fake_github.deployments.values()
        assert fake_github.statuses[deployment["id"]][-1]["state"] == "success"
