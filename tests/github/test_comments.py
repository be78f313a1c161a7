"""Only the service's own comment is adopted (issue 11 §2): anyone can paste the hidden marker
into a comment; with a token the service's comment is the one written by the token's user
(`GET /user`), with an App the one `performed_via_github_app` by our App. Someone else's comment
is never edited; the service writes its own."""

from __future__ import annotations

from pathlib import Path

from midori_preview.github.comments import MARKER
from tests.conftest import Backend
from tests.github.conftest import (
    APP_ID,
    Origin,
    app_keys,
    app_settings,
    deliver,
    gh_app,
    gh_settings,
    pr_payload,
    settle,
    site,
)
from tests.github.fake_github import APP_SLUG, FakeGitHub, serve_fake

REPO = "octo-org/site"


async def test_a_collaborators_comment_with_the_marker_is_not_adopted(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("v1"))[0]
    theirs = fake_github.seed_comment(REPO, 7, f"{MARKER}\nsteered by mona", login="mona")
    for i in range(40):  # our own old comment sits on page 2 (30 a page by default)
        fake_github.seed_comment(REPO, 7, f"review {i}", login="mona")
    async with gh_app(
        gh_settings(tmp_path, Backend("embedded", None, None), fake_github, origin)
    ) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
    assert fake_github.comments[theirs]["history"] == [f"{MARKER}\nsteered by mona"]
    [ours] = [c for c in fake_github.comments_on(REPO, 7) if c["user"]["login"] == "octo-bot"]
    assert "is ready" in ours["body"] and len(ours["history"]) == 2
    assert len(fake_github.calls_to("GET", r"^/user$")) == 1  # asked once


async def test_with_an_app_only_a_comment_made_through_our_app_is_adopted(
    tmp_path: Path, origin: Origin
) -> None:
    sha = origin.make(REPO, site("v1"))[0]
    pem, public = app_keys()
    fake = FakeGitHub(git_root=origin.root, app_id=APP_ID, app_public_key=public)
    other_app = fake.seed_comment(REPO, 7, f"{MARKER}\nanother app", "copycat[bot]", app_id=999)
    person = fake.seed_comment(REPO, 7, f"{MARKER}\na person", f"{APP_SLUG}-fan")
    ours = fake.seed_comment(REPO, 7, f"{MARKER}\nold", f"{APP_SLUG}[bot]", app_id=APP_ID)
    async with serve_fake(fake):
        settings = app_settings(tmp_path, fake, origin, pem)
        async with gh_app(settings) as running:
            await deliver(running.client, "pull_request", pr_payload("opened", sha))
            await settle(running)
    assert len(fake.comments[other_app]["history"]) == 1
    assert len(fake.comments[person]["history"]) == 1
    assert "is ready" in fake.comments[ours]["body"]
    assert fake.calls_to("POST", r"/comments$") == []
