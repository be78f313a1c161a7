"""A pull request's life: opened → synchronize → closed edits ONE comment through its states, keeps
a GitHub Deployment per head commit (in_progress → success, inactive when replaced or closed), and
hands reviewers a stable link that opens a fresh short-lived preview while the PR is open and
stops working when it closes. Also: build failures, the marker, GitHub failing, how a repository
is previewed (preview.json / index.html / package.json), App auth and the reaper's rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from midori_preview.github.comments import MARKER
from midori_preview.github.payloads import Target
from tests.conftest import Backend, Running
from tests.github.conftest import (
    APP_ID,
    Origin,
    app_keys,
    app_settings,
    deliver,
    gh_app,
    gh_settings,
    pr_payload,
    push_payload,
    sandboxes,
    settle,
    site,
)
from tests.github.fake_github import FakeGitHub, serve_fake
from tests.previews.helpers import git
from tests.support.clock import ManualClock

REPO = "octo-org/site"


def link_in(body: str) -> str:
    found = re.search(r"\]\((http://localhost:8000/r/[^)]+)\)", body)
    assert found, body
    return found.group(1)


def state_of(body: str) -> str:
    for word, state in [
        ("is ready", "ready"),
        ("Building", "building"),
        ("failed", "failed"),
        ("was closed", "closed"),
        ("was stopped", "stopped"),
    ]:
        if word in body:
            return state
    raise AssertionError(body)


async def visit(running: Running, link: str) -> Any:
    return await running.client.get(link.removeprefix("http://localhost:8000"))


async def page_behind(running: Running, link: str) -> str:
    res = await visit(running, link)
    assert res.status_code == 302, res.text
    assert res.headers["cache-control"] == "no-store"
    page = await running.client.get(res.headers["location"])
    assert page.status_code == 200
    return str(page.text)


async def test_opened_synchronize_closed(
    tmp_path: Path, pg_backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    first, second = origin.make(REPO, site("first version"), site("second version"))
    settings = gh_settings(tmp_path, pg_backend, fake_github, origin)
    # GitHub hiccups once on the first comment: retried, still exactly one comment.
    fake_github.fail("POST", r"/issues/7/comments$", 502)
    fake_github.fail("POST", r"/deployments$", 429, headers={"Retry-After": "0"})
    async with gh_app(settings) as running:
        res = await deliver(running.client, "pull_request", pr_payload("opened", first))
        assert res.status_code == 202
        await settle(running)

        [comment] = fake_github.comments_on(REPO, 7)
        assert MARKER in comment["body"]
        assert [state_of(b) for b in comment["history"]] == ["building", "ready"]
        link = link_in(comment["body"])
        assert "first version" in await page_behind(running, link)
        [row1] = await sandboxes(running)
        assert (row1.user_id, row1.kind) == ("github", "github")
        assert row1.preview_token and row1.preview_token not in comment["body"]
        assert "preview.localhost" not in comment["body"]
        [dep1] = fake_github.deployments.values()
        assert (dep1["ref"], dep1["environment"], dep1["transient_environment"]) == (
            first,
            "preview/pr-7",  # one environment per PR
            True,
        )
        assert [s["state"] for s in fake_github.statuses[dep1["id"]]] == ["in_progress", "success"]
        assert fake_github.statuses[dep1["id"]][-1]["environment_url"] == link

        # Each visit: a fresh short-lived link (the review TTL, not the long openUrl TTL).
        again = await visit(running, link)
        assert again.status_code == 302 and again.headers["location"] != row1.open_url

        res = await deliver(
            running.client,
            "pull_request",
            pr_payload("synchronize", second, updated_at="2026-01-12T09:10:44Z"),
        )
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert [state_of(b) for b in comment["history"]] == [
            "building",
            "ready",
            "building",
            "ready",
        ]
        assert link_in(comment["body"]) == link  # the same link for the PR's whole life
        assert "second version" in await page_behind(running, link)
        rows = {r.id: r for r in await sandboxes(running)}
        assert (rows[row1.id].status, rows[row1.id].reason) == ("stopped", "replaced")
        [row2] = [r for r in rows.values() if r.id != row1.id]
        assert row2.status == "running"
        dep2 = next(d for d in fake_github.deployments.values() if d["ref"] == second)
        assert dep2["environment"] == "preview/pr-7"  # the PR's one environment, again
        assert fake_github.statuses[dep1["id"]][-1]["state"] == "inactive"
        assert [s["state"] for s in fake_github.statuses[dep2["id"]]] == ["in_progress", "success"]

        res = await deliver(
            running.client,
            "pull_request",
            pr_payload("closed", second, updated_at="2026-01-12T10:02:13Z"),
        )
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert [state_of(b) for b in comment["history"]][-1] == "closed"
        assert link not in comment["body"]
        assert fake_github.statuses[dep2["id"]][-1]["state"] == "inactive"
        row2 = next(r for r in await sandboxes(running) if r.id == row2.id)
        assert (row2.status, row2.reason) == ("stopped", "pr_closed")
        gone = await visit(running, link)
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "preview_closed"

        # Never a second comment; the one comment was created once and edited in place.
        assert len(fake_github.calls_to("POST", r"/issues/7/comments$")) == 2  # 502, then 201
        assert len(fake_github.comments) == 1
        # A late, out-of-order delivery of the old "synchronize" does not resurrect it.
        await deliver(
            running.client,
            "pull_request",
            pr_payload("synchronize", first, updated_at="2026-01-12T09:00:00Z"),
        )
        await settle(running)
        assert len(await sandboxes(running)) == 2
        # Reopening builds again, into the same comment.
        await deliver(
            running.client,
            "pull_request",
            pr_payload("reopened", second, updated_at="2026-01-12T11:00:00Z"),
        )
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert state_of(comment["body"]) == "ready"
        assert "second version" in await page_behind(running, link)


async def test_failed_build_is_reported_with_its_step(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    broken = {
        "package.json": '{"name": "broken", "version": "1.0.0", "scripts": '
        '{"build": "echo compiling && echo \'error TS2322: nope\' >&2 && exit 3"}}',
    }
    sha = origin.make(REPO, broken)[0]
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
        [comment] = fake_github.comments_on(REPO, 7)
        assert [state_of(b) for b in comment["history"]] == ["building", "failed"]
        assert "step `build`" in comment["body"] and "exit code 3" in comment["body"]
        assert "error TS2322: nope" in comment["body"]
        [dep] = fake_github.deployments.values()
        assert [s["state"] for s in fake_github.statuses[dep["id"]]] == ["in_progress", "failure"]
        [row] = await sandboxes(running)
        assert row.status == "error"
        assert "/r/" not in comment["body"]  # a failed preview's comment has no review link
        res = await running.client.get("/r/" + "x" * 20 + "." + "y" * 20)
        assert res.status_code == 404


async def test_comment_is_found_again_by_its_marker(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    """Our mapping is gone (new database) but GitHub still has our comment on page 2 of the
    PR's comments: it is edited, not duplicated."""
    sha = origin.make(REPO, site("v1"))[0]
    for i in range(100):
        fake_github.seed_comment(REPO, 7, f"LGTM {i}", login="mona")
    ours = fake_github.seed_comment(REPO, 7, f"{MARKER}\nold preview comment")
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
    assert len(fake_github.comments_on(REPO, 7)) == 101
    assert fake_github.calls_to("POST", r"/comments$") == []
    assert state_of(fake_github.comments[ours]["body"]) == "ready"
    pages = {c.query.get("page", "1") for c in fake_github.calls_to("GET", r"/issues/7/comments$")}
    assert pages == {"1", "2"}


async def test_how_a_repository_is_previewed(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    """preview.json if present (here a long, pretty-printed one) · else index.html as a static
    site · else package.json: npm install, npm run build, its output served."""
    notes = ",\n".join(f'    "note {i}"' for i in range(80))
    origin.make(
        "octo-org/configured",
        {
            "preview.json": "{\n"
            '  "build": "mkdir -p out && '
            "echo '<h1>built by preview.json</h1>' > out/index.html\",\n"
            '  "outputDir": "out",\n'
            f'  "notes": [\n{notes}\n  ]\n'
            "}\n",
            "index.html": "<h1>NOT this one</h1>",
            "package.json": '{"name": "not-this"}',
        },
    )
    origin.make(
        "octo-org/static",
        {"index.html": "<h1>plain static site</h1>", "package.json": '{"name": "ignored"}'},
    )
    origin.make(
        "octo-org/node",
        {
            "package.json": '{"name": "node-site", "version": "1.0.0", "private": true, '
            '"scripts": {"build": "node build.js"}}',
            "build.js": "const fs = require('fs'); fs.mkdirSync('dist', {recursive: true}); "
            "fs.writeFileSync('dist/index.html', '<h1>built by npm run build</h1>');",
        },
    )
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_push_branches=["main"],
    )
    expected = {
        "octo-org/configured": "built by preview.json",
        "octo-org/static": "plain static site",
        "octo-org/node": "built by npm run build",
    }
    async with gh_app(settings) as running:
        for repo in expected:
            sha = git(origin.root.parent / f"{origin.root.name}-work" / repo, "rev-parse", "HEAD")
            res = await deliver(running.client, "push", push_payload("main", sha, repo=repo))
            assert res.json()["outcome"] == "accepted"
        await settle(running)
        for repo, text in expected.items():
            dep = next(d for d in fake_github.deployments.values() if d["repo"] == repo)
            statuses = fake_github.statuses[dep["id"]]
            assert statuses[-1]["state"] == "success", (repo, statuses)
            page = await page_behind(running, statuses[-1]["environment_url"])
            assert text in page, repo


async def test_github_app_auth_uses_cached_installation_tokens(
    tmp_path: Path, origin: Origin
) -> None:
    pem, public = app_keys()
    sha = origin.make(REPO, site("app auth"))[0]
    fake = FakeGitHub(git_root=origin.root, app_id=APP_ID, app_public_key=public)
    async with serve_fake(fake):
        settings = app_settings(tmp_path, fake, origin, pem)
        async with gh_app(settings) as running:
            await deliver(running.client, "pull_request", pr_payload("opened", sha))
            await settle(running)
        token_calls = fake.calls_to("POST", r"^/app/installations/42424242/access_tokens$")
        api_tokens = [c for c in token_calls if not c.json]
        assert len(api_tokens) == 1  # the payload's installation; cached for every later call
        # The clone's own token is scoped to the one repository, read-only (asked per clone).
        [clone] = [c for c in token_calls if c.json]
        assert clone.json == {"repositories": ["site"], "permissions": {"contents": "read"}}
        api = [c for c in fake.calls if not c.path.startswith("/app/")]
        assert len(api) >= 5
        assert all(c.authorization and c.authorization[7:] in fake.installation_tokens for c in api)
        [comment] = fake.comments_on(REPO, 7)
        assert state_of(comment["body"]) == "ready"


async def test_pr_previews_are_not_idle_reaped_but_expire(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("long lived"))[0]
    clock = ManualClock()
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_preview_ttl_seconds=10_000,
    )
    async with gh_app(settings, clock) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
        link = link_in(fake_github.comments_on(REPO, 7)[0]["body"])
        reaper = running.services.reaper
        clock.advance(settings.idle_timeout_seconds * 3)
        await reaper.run_pass()
        [row] = await sandboxes(running)
        assert row.status == "running"  # nobody heartbeats a PR preview: no idle reaping
        assert "long lived" in await page_behind(running, link)
        clock.advance(10_000)
        await reaper.run_pass()
        [row] = await sandboxes(running)
        assert (row.status, row.reason) == ("stopped", "expired")
        gone = await visit(running, link)
        assert gone.status_code == 410 and gone.json()["error"]["code"] == "preview_stopped"
        # The scheduler's reconcile job tells GitHub: comment "stopped", deployment inactive.
        assert await running.services.github.reconcile() == 1
        [dep] = fake_github.deployments.values()
        [comment] = fake_github.comments_on(REPO, 7)
        assert state_of(comment["body"]) == "stopped"
        assert "expired" in comment["body"]
        assert fake_github.statuses[dep["id"]][-1]["state"] == "inactive"
        assert await running.services.github.reconcile() == 0  # nothing left to tell


async def test_github_failures_never_stop_the_preview(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    """GitHub down (5xx past the retries) and a 4xx: the preview still builds, nothing is
    retried on the 4xx, and the review link works."""
    sha = origin.make(REPO, site("works anyway"))[0]
    fake_github.fail("GET", r"/issues/7/comments$", 503, times=100)
    fake_github.fail("POST", r"/deployments$", 422)
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", sha))
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        assert fake_github.comments == {}  # never a blind create when the lookup failed
        assert len(fake_github.calls_to("GET", r"/issues/7/comments$")) == 2 * 4  # 2 tries x 4
        # 422: not retried (nor re-sent by the reconcile job); the next state tries anew.
        assert len(fake_github.calls_to("POST", r"/deployments$")) == 2
        [dep] = fake_github.deployments.values()
        assert fake_github.statuses[dep["id"]][-1]["state"] == "success"
        link = running.services.github.review_link(Target.pull(REPO, 7))
        assert "works anyway" in await page_behind(running, link)


async def test_pr_previews_have_their_own_concurrency_limit(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    first, second = origin.make(REPO, site("pr one"), site("pr two"))
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_max_concurrent_previews=1,
        max_concurrent_sandboxes_per_user=5,
    )
    async with gh_app(settings) as running:
        await deliver(running.client, "pull_request", pr_payload("opened", first, number=1))
        await settle(running)
        await deliver(running.client, "pull_request", pr_payload("opened", second, number=2))
        await settle(running)
        [one] = fake_github.comments_on(REPO, 1)
        [two] = fake_github.comments_on(REPO, 2)
        assert state_of(one["body"]) == "ready"
        assert state_of(two["body"]) == "failed" and "limit 1" in two["body"]
        dep = next(d for d in fake_github.deployments.values() if d["ref"] == second)
        assert [s["state"] for s in fake_github.statuses[dep["id"]]] == ["failure"]
        # Closing PR 1 frees the slot: PR 2's next commit builds.
        await deliver(running.client, "pull_request", pr_payload("closed", first, number=1))
        await settle(running)
        third = origin.commit(REPO, site("pr two, again"))
        sync = pr_payload("synchronize", third, number=2, updated_at="2026-01-12T12:00:00Z")
        await deliver(running.client, "pull_request", sync)
        await settle(running)
        [two] = fake_github.comments_on(REPO, 2)
        assert state_of(two["body"]) == "ready"
        assert "pr two, again" in await page_behind(running, link_in(two["body"]))
