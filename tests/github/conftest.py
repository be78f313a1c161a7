"""Fixtures of the GitHub tests: the fake GitHub API, bare git repositories standing in for
github.com (served over git's smart HTTP by the fake), signed deliveries shaped like GitHub's."""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from midori_preview.github.signature import sign_body
from midori_preview.settings import Settings
from tests.conftest import Backend, Running, make_settings, running_app
from tests.github.fake_github import FakeGitHub, serve_fake
from tests.previews.helpers import git
from tests.support.clock import ManualClock

SECRET = "whsec-test-5f1c0e"
PAYLOADS = Path(__file__).parent / "payloads"
HOOK = "/api/integrations/github"


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((PAYLOADS / f"{name}.json").read_text()))


def _set_repo(repo: dict[str, Any], full_name: str, *, fork: bool = False) -> None:
    owner, _, name = full_name.partition("/")
    repo["full_name"] = full_name
    repo["name"] = name
    repo["owner"]["login"] = owner
    repo["fork"] = fork
    repo["clone_url"] = f"https://github.com/{full_name}.git"
    repo["html_url"] = f"https://github.com/{full_name}"


def pr_payload(
    action: str,
    sha: str,
    *,
    number: int = 7,
    ref: str = "hero-update",
    repo: str = "octo-org/site",
    head_repo: str | None = None,
    updated_at: str | None = None,
) -> dict[str, Any]:
    """A `pull_request` delivery (from the recorded-shape payload files) for this commit."""
    name = {"opened": "opened", "reopened": "opened", "synchronize": "synchronize"}.get(
        action, "closed" if action == "closed" else "opened"
    )
    body = load(f"pull_request.{name}")
    body["action"] = action
    body["number"] = number
    pr = body["pull_request"]
    pr["number"] = number
    pr["head"]["sha"], pr["head"]["ref"] = sha, ref
    if updated_at is not None:
        pr["updated_at"] = updated_at
    _set_repo(body["repository"], repo)
    _set_repo(pr["base"]["repo"], repo)
    head = head_repo or repo
    _set_repo(pr["head"]["repo"], head, fork=head != repo)
    pr["head"]["label"] = f"{head.split('/')[0]}:{ref}"
    return body


def push_payload(
    branch: str, sha: str, *, repo: str = "octo-org/site", deleted: bool = False
) -> dict[str, Any]:
    body = load("push")
    body["ref"] = f"refs/heads/{branch}"
    body["after"] = "0" * 40 if deleted else sha
    body["deleted"] = deleted
    body["head_commit"] = None if deleted else {**body["head_commit"], "id": sha}
    _set_repo(body["repository"], repo)
    return body


async def deliver(
    client: httpx.AsyncClient,
    event: str,
    payload: dict[str, Any] | None = None,
    *,
    delivery: str | None = None,
    raw: bytes | None = None,
    signature: str | None = None,
    secret: str = SECRET,
    form: bool = False,
) -> httpx.Response:
    """POST a delivery the way GitHub does: exact bytes, HMAC-SHA256 of them in a header; with
    `form`, as GitHub's default content type sends it (`payload=<JSON>`, form-encoded)."""
    body = raw if raw is not None else json.dumps(payload).encode()
    if form and raw is None:
        body = urlencode({"payload": json.dumps(payload)}).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded" if form else "application/json",
        "User-Agent": "GitHub-Hookshot/a1b2c3d",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-11ef",
        "X-GitHub-Hook-ID": "470032981",
        "X-Hub-Signature-256": signature
        if signature is not None
        else sign_body(secret.encode(), body),
    }
    if signature == "":
        del headers["X-Hub-Signature-256"]
    return await client.post(HOOK, content=body, headers=headers)


@dataclass
class Origin:
    """Bare repositories at <root>/<owner>/<name>.git: what GITHUB_CLONE_BASE_URL points at."""

    root: Path

    @property
    def base_url(self) -> str:
        return f"file://{self.root}"

    def make(self, full_name: str, *commits: dict[str, str], branch: str = "main") -> list[str]:
        """A repository whose branch gets one commit per file set: the commit shas."""
        bare = self.root / f"{full_name}.git"
        bare.mkdir(parents=True)
        git(bare, "init", "--quiet", "--bare", "-b", branch)
        work = self.root.parent / f"{self.root.name}-work" / full_name
        work.mkdir(parents=True)
        git(work, "init", "--quiet", "-b", branch)
        git(work, "remote", "add", "origin", str(bare))
        return [self.commit(full_name, files, branch=branch) for files in commits]

    def commit(self, full_name: str, files: dict[str, str], *, branch: str = "main") -> str:
        work = self.root.parent / f"{self.root.name}-work" / full_name
        for path, content in files.items():
            target = work / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
        git(work, "add", "-A")
        git(work, "commit", "--quiet", "--allow-empty", "-m", f"commit {len(files)}")
        git(work, "push", "--quiet", "origin", f"HEAD:{branch}")
        return git(work, "rev-parse", "HEAD")


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return Origin(tmp_path / "git")


@pytest.fixture
async def fake_github(origin: Origin) -> AsyncIterator[FakeGitHub]:
    async with serve_fake(FakeGitHub(git_root=origin.root)) as fake:
        yield fake


APP_ID = 31337  # the GitHub App the fake knows (its installation is the payloads' 42424242)


def app_keys() -> tuple[str, str]:
    """A fresh RSA key pair for the GitHub App: (private PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return pem, public


def app_settings(tmp_path: Path, fake: FakeGitHub, origin: Origin, pem: str) -> Settings:
    """Settings that authenticate as the GitHub App (no token), on the embedded backend."""
    return gh_settings(
        tmp_path, Backend("embedded", None, None), fake, origin,
        github_token=None, github_app_id=APP_ID, github_app_private_key=pem,
    )  # fmt: skip


def gh_settings(
    tmp_path: Path, backend: Backend, fake: FakeGitHub, origin: Origin, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "github_webhook_secret": SECRET,
        "github_token": fake.token,
        "github_api_url": fake.url,
        "github_clone_base_url": fake.git_base,  # git smart HTTP, as github.com serves it
        "github_repo_allowlist": ["octo-org/*"],
        "github_retry_backoff_seconds": 0.01,
        "github_request_timeout_seconds": 5,
        # Only the integration's own base may be cloned from: proves it is allowed on its own.
        "git_allowed_url_prefixes": ["https://github.com/"],
    }
    values.update(overrides)
    return make_settings(tmp_path, backend, **values)


@asynccontextmanager
async def gh_app(settings: Settings, clock: ManualClock | None = None) -> AsyncIterator[Running]:
    async with running_app(settings, clock=clock or ManualClock()) as running:
        try:
            yield running
        finally:
            await running.services.github.aclose()


async def settle(running: Running) -> None:
    """Wait until webhook work, builds and the comment/deployment updates are all done."""
    await running.services.github.wait_idle()
    await running.service.wait_idle()
    await running.services.github.wait_idle()


async def sandboxes(running: Running) -> list[Any]:
    """Every sandbox row (any user, any state)."""
    from sqlalchemy import select

    from midori_preview.db.models import Sandbox

    async with running.services.db.database.writes() as s:
        return list(await s.scalars(select(Sandbox).order_by(Sandbox.created_at)))


def site(text: str) -> dict[str, str]:
    return {"index.html": f"<!doctype html><title>t</title><h1>{text}</h1>\n"}


def copy_payload(payload: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(payload)
