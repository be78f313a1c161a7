"""Fork PRs wait for a maintainer (issue 11 §9): a pull request from a fork whose author is not
a collaborator of the base repository is not built — its comment says a maintainer must add the
label (GITHUB_FORK_LABEL, default `preview`); once the label is added (`labeled`) it builds, and
its later commits too. A collaborator's fork PR builds at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import Backend
from tests.github.conftest import (
    Origin,
    deliver,
    gh_app,
    gh_settings,
    pr_payload,
    sandboxes,
    settle,
    site,
)
from tests.github.fake_github import FakeGitHub

REPO = "octo-org/site"
FORK = "stranger/site"


def by(payload: dict[str, Any], login: str, *labels: str) -> dict[str, Any]:
    payload["pull_request"]["user"]["login"] = login
    payload["pull_request"]["labels"] = [{"name": n, "color": "ededed"} for n in labels]
    return payload


async def test_a_strangers_fork_pr_waits_for_the_label(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    origin.make(REPO, site("base"))
    first, second = origin.make(FORK, site("fork v1"), site("fork v2"))
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_build_forks=True
    )
    async with gh_app(settings) as running:
        opened = by(pr_payload("opened", first, head_repo=FORK), "stranger")
        res = await deliver(running.client, "pull_request", opened)
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        assert await sandboxes(running) == []
        [comment] = fake_github.comments_on(REPO, 7)
        assert "maintainer adds the `preview` label" in comment["body"]
        assert fake_github.deployments == {}
        assert fake_github.calls_to("GET", r"/collaborators/stranger$")

        # Another label does nothing; the maintainer's `preview` label builds it.
        other = by(pr_payload("opened", first, head_repo=FORK, updated_at="2026-01-12T10:00:00Z"),
                   "stranger", "bug")  # fmt: skip
        other["action"], other["label"] = "labeled", {"name": "bug"}
        res = await deliver(running.client, "pull_request", other)
        assert res.json() == {"outcome": "ignored", "reason": "action"}
        labeled = by(pr_payload("opened", first, head_repo=FORK, updated_at="2026-01-12T10:01:00Z"),
                     "stranger", "preview")  # fmt: skip
        labeled["action"], labeled["label"] = "labeled", {"name": "preview"}
        res = await deliver(running.client, "pull_request", labeled)
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"]

        # Its next commit (still labelled) builds without asking again.
        at = "2026-01-12T10:02:00Z"
        sync = by(pr_payload("synchronize", second, head_repo=FORK, updated_at=at),
                  "stranger", "preview")  # fmt: skip
        await deliver(running.client, "pull_request", sync)
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"] and second[:7] in comment["body"]


async def test_a_collaborators_fork_pr_builds_at_once(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    origin.make(REPO, site("base"))
    [sha] = origin.make("mona/site", site("by a collaborator"))
    fake_github.collaborators.add((REPO, "mona"))
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_build_forks=True
    )
    async with gh_app(settings) as running:
        await deliver(running.client, "pull_request",
                      by(pr_payload("opened", sha, head_repo="mona/site"), "mona"))  # fmt: skip
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        # A label on a PR from the base repository itself gates nothing: ignored.
        own = pr_payload("opened", sha, number=8, updated_at="2026-01-12T10:00:00Z")
        own["action"], own["label"] = "labeled", {"name": "preview"}
        res = await deliver(running.client, "pull_request", own)
        assert res.json() == {"outcome": "ignored", "reason": "action"}
