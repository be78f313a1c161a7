"""The webhook's front door: signatures over the raw body, size cap, the route off without a secret,
one action per delivery id (even 10 concurrent copies), and which deliveries build nothing:
other events, forks, repositories off the allowlist, hostile names, refs and clone URLs."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.conftest import Backend
from tests.github.conftest import (
    HOOK,
    SECRET,
    Origin,
    deliver,
    gh_app,
    gh_settings,
    pr_payload,
    push_payload,
    sandboxes,
    settle,
    site,
)
from tests.github.fake_github import FakeGitHub


async def review_page(running: Any, link: str) -> str:
    """Follow a review link to the preview and return the page it serves."""
    path = link.split("localhost:8000", 1)[1]
    res = await running.client.get(path)
    assert res.status_code == 302, res.text
    page = await running.client.get(res.headers["location"])
    assert page.status_code == 200
    return str(page.text)


def bad_signatures(payload: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(what, raw body, X-Hub-Signature-256) that must all be refused."""
    body = json.dumps(payload).encode()

    def mac(key: bytes, data: bytes, algo: Any = hashlib.sha256) -> str:
        return hmac.new(key, data, algo).hexdigest()

    good = "sha256=" + mac(SECRET.encode(), body)
    return [
        ("missing", body, ""),
        ("empty value", body, "sha256="),
        ("wrong secret", body, "sha256=" + mac(b"other", body)),
        ("legacy sha1", body, "sha1=" + mac(SECRET.encode(), body, hashlib.sha1)),
        ("no prefix", body, mac(SECRET.encode(), body)),
        ("truncated", body, good[:-2]),
        ("upper-case hex", body, good.upper().replace("SHA256=", "sha256=")),
        # The same JSON, other bytes: the HMAC is over the raw body, never a re-serialization.
        ("re-serialized", json.dumps(payload, indent=2).encode(), good),
        ("re-ordered", json.dumps(payload, sort_keys=True).encode(), good),
        ("one byte added", body + b" ", good),
    ]


async def test_only_a_valid_signature_acts(
    tmp_path: Path, backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("v1"))[0]
    payload = pr_payload("opened", sha)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        for what, raw, signature in bad_signatures(payload):
            res = await deliver(
                running.client, "pull_request", raw=raw, signature=signature, delivery="d-1"
            )
            assert res.status_code == 401, what
            assert res.json()["error"]["code"] == "unauthorized"
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []
        # Nothing was recorded: the same delivery id, correctly signed, still acts.
        good = await deliver(running.client, "pull_request", payload, delivery="d-1")
        assert good.status_code == 202
        assert good.json() == {"outcome": "accepted", "reason": None}
        await settle(running)
        rows = await sandboxes(running)
        assert [(r.user_id, r.kind, r.status) for r in rows] == [("github", "github", "running")]
        [comment] = fake_github.comments_on("octo-org/site", 7)
        link = comment["body"].split("](", 1)[1].split(")", 1)[0]
        assert "v1" in await review_page(running, link)


async def test_route_is_off_without_a_secret(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_webhook_secret=None
    )
    async with gh_app(settings) as running:
        res = await deliver(running.client, "pull_request", pr_payload("opened", "a" * 40))
        assert res.status_code == 404
        assert res.json()["error"]["code"] == "not_found"


async def test_body_over_the_cap_is_refused_before_anything(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_webhook_max_bytes=4096,
    )
    sha = origin.make("octo-org/site", site("v1"))[0]
    big = json.dumps(pr_payload("opened", sha)).encode()  # ~20 KB, correctly signed
    async with gh_app(settings) as running:
        res = await deliver(running.client, "pull_request", raw=big)
        assert res.status_code == 413
        assert res.json()["error"]["code"] == "payload_too_large"

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: streamed and cut off
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        from midori_preview.github.signature import sign_body

        streamed = await running.client.post(
            HOOK,
            content=chunks(),
            headers={
                "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": "streamed-1",
                "X-Hub-Signature-256": sign_body(SECRET.encode(), big),
            },
        )
        assert streamed.status_code == 413
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []


async def test_same_delivery_ten_times_concurrently_acts_once(
    tmp_path: Path, pg_backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("once"))[0]
    payload = pr_payload("opened", sha)
    async with gh_app(gh_settings(tmp_path, pg_backend, fake_github, origin)) as running:
        answers = await asyncio.gather(
            *(
                deliver(running.client, "pull_request", payload, delivery="72d3162e-cc78-11e3")
                for _ in range(10)
            )
        )
        assert [a.status_code for a in answers] == [202] * 10
        outcomes = sorted(a.json()["outcome"] for a in answers)
        assert outcomes == ["accepted"] + ["duplicate"] * 9
        await settle(running)
        assert len(await sandboxes(running)) == 1
        assert len(fake_github.comments_on("octo-org/site", 7)) == 1
        assert len(fake_github.calls_to("POST", r"/issues/7/comments$")) == 1
        assert len(fake_github.deployments) == 1
        # A redelivery later (GitHub's "Redeliver" button) is still a no-op.
        again = await deliver(
            running.client, "pull_request", payload, delivery="72d3162e-cc78-11e3"
        )
        assert again.json()["outcome"] == "duplicate"


async def test_other_events_and_actions_are_no_ops(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("v1"))[0]
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_push_branches=["main"],
    )
    not_open = pr_payload("opened", sha)
    not_open["pull_request"]["state"] = "closed"
    cases: list[tuple[str, dict[str, Any]]] = [
        ("ping", {"zen": "Design for failure.", "hook_id": 1}),
        ("issues", {"action": "opened", "issue": {"number": 1}}),
        ("pull_request", pr_payload("labeled", sha)),
        ("pull_request", pr_payload("edited", sha)),
        ("pull_request", pr_payload("ready_for_review", sha)),
        ("pull_request", not_open),
        ("push", push_payload("feature-x", sha)),  # not a configured branch
        ("push", {**push_payload("main", sha), "ref": "refs/tags/v1.0"}),
        ("pull_request", pr_payload("closed", sha)),  # nothing was ever built for it
    ]
    async with gh_app(settings) as running:
        for event, payload in cases:
            res = await deliver(running.client, event, payload)
            assert res.status_code == 202
            assert res.json()["outcome"] in ("ignored", "accepted"), (event, payload.get("action"))
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []


async def test_forks_only_with_build_forks(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    origin.make("octo-org/site", site("base"))
    fork_sha = origin.make("forker/site", site("from the fork"))[0]
    payload = pr_payload("opened", fork_sha, head_repo="forker/site")
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        res = await deliver(running.client, "pull_request", payload)
        assert res.json() == {"outcome": "ignored", "reason": "fork"}
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []
    settings = gh_settings(
        tmp_path / "again", backend, fake_github, origin, github_build_forks=True
    )
    fake_github.collaborators.add(("octo-org/site", "mona"))  # the PR's author (see test_forks)
    async with gh_app(settings) as running:
        res = await deliver(running.client, "pull_request", payload)
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        [comment] = fake_github.comments_on("octo-org/site", 7)
        link = comment["body"].split("](", 1)[1].split(")", 1)[0]
        assert "from the fork" in await review_page(running, link)


async def test_repositories_off_the_allowlist_are_ignored(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("someone/else", site("not ours"))[0]
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        for event, payload in [
            ("pull_request", pr_payload("opened", sha, repo="someone/else")),
            ("pull_request", pr_payload("opened", sha, repo="octo-org-evil/site")),
            ("push", push_payload("main", sha, repo="someone/else")),
        ]:
            res = await deliver(running.client, event, payload)
            assert res.json()["outcome"] == "ignored", payload["repository"]["full_name"]
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []


HOSTILE_NAMES = [
    "../x",
    "a/b/c",
    "-x/y",
    "octo-org/..",
    "octo-org/.",
    "octo-org/site.git",
    "octo org/site",
    "octo-org/site\n",
    "octo-org/",
    "/site",
    "octo-org/site;rm",
    "octo-org/%2e%2e",
    "octo--org/site",
    "x" * 40 + "/site",
    7,
]
HOSTILE_REFS = [
    ("ref", "--upload-pack=evil"),
    ("ref", "a..b"),
    ("ref", "-b"),
    ("ref", "feature/../../x"),
    ("ref", "main\n"),
    ("ref", "x.lock"),
    ("sha", "--upload-pack=evil"),
    ("sha", "HEAD"),
    ("sha", "a" * 39),
    ("sha", "0" * 40),
    ("sha", "A" * 40),
    ("sha", "a" * 40 + "\n"),
]


async def test_hostile_repository_names_are_refused(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_repo_allowlist=["*"],
        github_push_branches=["*"],
    )
    async with gh_app(settings) as running:
        for full_name in HOSTILE_NAMES:
            payload = pr_payload("opened", "a" * 40)
            payload["repository"]["full_name"] = full_name
            payload["pull_request"]["base"]["repo"]["full_name"] = full_name
            push = push_payload("main", "a" * 40)
            push["repository"]["full_name"] = full_name
            for event, body in [("pull_request", payload), ("push", push)]:
                res = await deliver(running.client, event, body)
                assert res.json() == {"outcome": "ignored", "reason": "invalid_repository"}, (
                    full_name
                )
            # ... also as the PR's head repository (where the commit would be cloned from).
            payload = pr_payload("opened", "a" * 40)
            payload["pull_request"]["head"]["repo"]["full_name"] = full_name
            res = await deliver(running.client, "pull_request", payload)
            assert res.json()["outcome"] == "ignored", full_name
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []


async def test_hostile_refs_are_refused(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("v1"))[0]
    settings = gh_settings(
        tmp_path, Backend("embedded", None, None), fake_github, origin, github_push_branches=["*"]
    )
    async with gh_app(settings) as running:
        for field, value in HOSTILE_REFS:
            payload = pr_payload("opened", sha)
            payload["pull_request"]["head"][field] = value
            res = await deliver(running.client, "pull_request", payload)
            assert res.json() == {"outcome": "ignored", "reason": "invalid_ref"}, value
            push = push_payload("main", sha)
            if field == "ref":
                push["ref"] = f"refs/heads/{value}"
            else:
                push["after"] = value
            res = await deliver(running.client, "push", push)
            # A zero `after` is how GitHub says "branch deleted": a teardown, not a build.
            expected = "accepted" if value == "0" * 40 else "ignored"
            assert res.json()["outcome"] == expected, value
        await settle(running)
        assert await sandboxes(running) == []
        assert fake_github.calls == []


async def test_clone_url_comes_from_the_base_url_never_the_payload(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("the real site"))[0]
    evil = Origin(tmp_path / "evil")
    evil_sha = evil.make("octo-org/site", site("EVIL"))[0]
    payload = pr_payload("opened", sha)
    hostile = f"file://{evil.root}/octo-org/site.git"
    for repo in (
        payload["repository"],
        payload["pull_request"]["head"]["repo"],
        payload["pull_request"]["base"]["repo"],
    ):
        repo.update(
            clone_url=hostile,
            git_url=hostile,
            ssh_url=hostile,
            svn_url=hostile,
            html_url=hostile,
            url=hostile,
        )
    backend = Backend("embedded", None, None)
    async with gh_app(gh_settings(tmp_path, backend, fake_github, origin)) as running:
        res = await deliver(running.client, "pull_request", payload)
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [comment] = fake_github.comments_on("octo-org/site", 7)
        link = comment["body"].split("](", 1)[1].split(")", 1)[0]
        page = await review_page(running, link)
        assert "the real site" in page and "EVIL" not in page
        # The evil repository's commit does not exist where we clone from: refused by git.
        payload2 = pr_payload("synchronize", evil_sha, updated_at="2026-01-12T11:00:00Z")
        await deliver(running.client, "pull_request", payload2)
        await settle(running)
        body = fake_github.comments_on("octo-org/site", 7)[0]["body"]
        assert "failed" in body and "EVIL" not in body


async def test_push_to_a_configured_branch_is_previewed(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make("octo-org/site", site("main branch"))[0]
    settings = gh_settings(
        tmp_path,
        Backend("embedded", None, None),
        fake_github,
        origin,
        github_push_branches=["main", "release/*"],
    )
    async with gh_app(settings) as running:
        res = await deliver(running.client, "push", push_payload("main", sha))
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running" and row.project_id == "gh:octo-org:site:branch:main"
        [deployment] = fake_github.deployments.values()
        assert deployment["ref"] == sha and deployment["transient_environment"] is True
        assert deployment["environment"] == "preview/main"  # one environment per branch
        states = [s["state"] for s in fake_github.statuses[deployment["id"]]]
        assert states == ["in_progress", "success"]
        link = fake_github.statuses[deployment["id"]][-1]["environment_url"]
        assert "main branch" in await review_page(running, link)
        assert fake_github.comments == {}  # no PR, no comment
        # Deleting the branch tears the preview down and kills the link.
        await deliver(running.client, "push", push_payload("main", sha, deleted=True))
        await settle(running)
        [row] = await sandboxes(running)
        assert (row.status, row.reason) == ("stopped", "branch_deleted")
        assert fake_github.statuses[deployment["id"]][-1]["state"] == "inactive"
        res = await running.client.get(link.split("localhost:8000", 1)[1])
        assert res.status_code == 410
