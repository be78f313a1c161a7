"""A burst of pull-request events settles (issue 11 §5): a rebase of 10 PRs sends 30
`synchronize` events within moments, in no particular order. GitHub previews count against
their repository's own create budget (not the service user's 10 a minute), superseded events
and builds give way to the newest, and every PR ends with one ready preview of its newest head,
one comment, and never a failure comment."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from midori_preview.previews.states import SandboxStatus
from tests.conftest import Backend
from tests.github.conftest import Origin, deliver, gh_app, gh_settings, pr_payload, sandboxes, site
from tests.github.fake_github import FakeGitHub
from tests.support.waiting import eventually

REPO = "octo-org/site"
PRS = range(1, 11)
ROUNDS = 3


async def test_thirty_synchronize_events_for_ten_prs_settle_to_their_newest_heads(
    tmp_path: Path, pg_backend: Backend, fake_github: FakeGitHub, origin: Origin
) -> None:
    shas = origin.make(REPO, *[site(f"pr {n} v{k}") for n in PRS for k in range(ROUNDS)])
    head = {n: shas[(n - 1) * ROUNDS : n * ROUNDS] for n in PRS}
    events = [(n, k) for n in PRS for k in range(ROUNDS)]
    random.Random(11).shuffle(events)  # deliveries race; GitHub does not promise an order
    settings = gh_settings(
        tmp_path,
        pg_backend,
        fake_github,
        origin,
        create_rate_per_minute=3,  # the service user's own budget: the burst must not use it
        github_max_concurrent_previews=30,
    )
    async with gh_app(settings) as running:
        sends = [
            deliver(
                running.client,
                "pull_request",
                pr_payload(
                    "synchronize",
                    head[n][k],
                    number=n,
                    updated_at=f"2026-01-12T10:0{k}:{n:02d}Z",
                ),
            )
            for n, k in events
        ]
        answers = await asyncio.gather(*sends)
        assert {a.json()["outcome"] for a in answers} == {"accepted"}
        await running.services.github.wait_idle()
        await running.service.wait_idle()

        async def every_pr_ready() -> bool:
            bodies = [fake_github.comments_on(REPO, n) for n in PRS]
            return all(len(b) == 1 and "is ready" in b[0]["body"] for b in bodies)

        await eventually(every_pr_ready, within=120, what="every PR's comment says ready")
        rows = await sandboxes(running)
        running_rows = [r for r in rows if r.status == SandboxStatus.RUNNING]
        assert len(running_rows) == len(PRS)
        for n in PRS:
            [comment] = fake_github.comments_on(REPO, n)
            assert head[n][-1][:7] in comment["body"], (n, comment["body"])
            assert not any("failed" in b for b in comment["history"]), comment["history"]
        by_project = {r.project_id: r for r in running_rows}
        assert sorted(by_project) == sorted(f"gh:octo-org:site:pr:{n}" for n in PRS)
        # The service user's create budget was not spent by the burst (3 a minute here).
        assert await running.services.quota.hit_rate_limit("github", per_minute=3) == 0
