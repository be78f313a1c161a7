"""Deliveries as GitHub sends them (issue 11 §6): the hook's default content type is `form`
(`payload=<JSON>`, the HMAC over the form body) and is accepted like JSON; a manual redelivery of
a delivery whose work failed runs again, of one that succeeded (or is running) stays a no-op."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

from midori_preview.github.signature import sign_body
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


async def test_form_encoded_deliveries_are_accepted(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("form"))[0]
    settings = gh_settings(tmp_path, Backend("embedded", None, None), fake_github, origin)
    async with gh_app(settings) as running:
        res = await deliver(running.client, "pull_request", pr_payload("opened", sha), form=True)
        assert res.status_code == 202 and res.json()["outcome"] == "accepted", res.text
        await settle(running)
        [row] = await sandboxes(running)
        assert row.status == "running"
        # Signed, but not a form GitHub would send: a clear 400, not a 500.
        for body in (b"nope=1", b"payload=%7B", urlencode({"payload": "[1]"}).encode()):
            bad = await deliver(running.client, "pull_request", raw=body, form=True)
            assert bad.status_code == 400, body
            assert bad.json()["error"]["code"] == "invalid_webhook"
        # The signature covers the form body: a JSON signature over the payload is refused.
        payload = pr_payload("opened", sha)
        wrong = sign_body(b"whsec-test-5f1c0e", json.dumps(payload).encode())
        res = await deliver(running.client, "pull_request", payload, form=True, signature=wrong)
        assert res.status_code == 401


async def test_redelivery_runs_again_only_when_the_work_failed(
    tmp_path: Path, fake_github: FakeGitHub, origin: Origin
) -> None:
    sha = origin.make(REPO, site("second time lucky"))[0]
    bare = origin.root / f"{REPO}.git"
    hidden = tmp_path / "hidden.git"
    bare.rename(hidden)  # GitHub cannot serve the repository yet: the clone fails
    settings = gh_settings(tmp_path, Backend("embedded", None, None), fake_github, origin)
    async with gh_app(settings) as running:
        payload = pr_payload("opened", sha)
        res = await deliver(running.client, "pull_request", payload, delivery="d-1")
        assert res.json()["outcome"] == "accepted"
        await settle(running)
        [failed] = await sandboxes(running)
        assert failed.status == "error"

        hidden.rename(bare)
        res = await deliver(running.client, "pull_request", payload, delivery="d-1")
        assert res.json()["outcome"] == "accepted"  # its work failed: runs again
        await settle(running)
        rows = await sandboxes(running)
        assert [r.status for r in rows] == ["error", "running"]
        [comment] = fake_github.comments_on(REPO, 7)
        assert "is ready" in comment["body"]

        res = await deliver(running.client, "pull_request", payload, delivery="d-1")
        assert res.json()["outcome"] == "duplicate"  # it succeeded: a no-op
        await settle(running)
        assert len(await sandboxes(running)) == 2
