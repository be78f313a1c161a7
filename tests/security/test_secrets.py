"""Sentinel secrets: the service runs with a recognisable Daytona key, JWT secret, webhook secret,
GitHub token and preview signing secret (set in its environment, as in production), goes through
a preview's whole life, admin and error paths, a GitHub pull request preview (a clone with the
token), and then no log line, no response body (a preview token only in its owner's own
answers), no process's argv and no sandbox's environment holds any of them."""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from midori_preview.bootstrap import build_provider
from midori_preview.clock import SystemClock
from midori_preview.providers.base import SandboxProvider
from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, Running, make_settings, running_app
from tests.github.conftest import Origin, deliver, pr_payload
from tests.github.fake_github import FakeGitHub, serve_fake
from tests.providers.test_daytona_provider import make_config
from tests.support.daytona import DaytonaEmulator
from tests.support.waiting import builds_settle

API = "/api/preview/daytona"
# Prints whether any variable of the sandbox's environment holds a sentinel (0 expected).
PROBE = "echo sentinel-vars=$(env | grep -c SENTINEL)"


def sentinels() -> dict[str, str]:
    tag = secrets.token_hex(12)
    return {
        "DAYTONA_API_KEY": f"dtn_SENTINEL_daytona_{tag}",
        "AUTH_JWT_SECRET": f"SENTINEL_jwt_{tag}",
        "GITHUB_WEBHOOK_SECRET": f"SENTINEL_hook_{tag}",
        "GITHUB_TOKEN": f"ghp_SENTINEL_github_{tag}",
        "PREVIEW_SIGNING_SECRET": f"SENTINEL_signing_{tag}",
    }


def bearer(secret: str, user: str, **claims: Any) -> dict[str, str]:
    token = jwt.encode({"sub": user, "exp": int(time.time()) + 600, **claims}, secret, "HS256")
    return {"Authorization": f"Bearer {token}"}


def argv_holding(values: list[str]) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().decode("utf-8", "replace")
            found += [f"{proc.name}: {v}" for v in values if v in argv]
    return found


@contextlib.asynccontextmanager
async def provider_for(
    kind: str, settings: Any, key: str
) -> AsyncIterator[tuple[SandboxProvider, DaytonaEmulator | None]]:
    if kind == "local":
        local = build_provider(settings.model_copy(update={"daytona_api_key": None}), SystemClock())
        try:
            yield local, None
        finally:
            await local.aclose()
        return
    async with DaytonaEmulator(api_key=key) as emulator:
        daytona = DaytonaProvider(make_config(emulator, deployment=settings.preview_deployment))
        try:
            yield daytona, emulator
        finally:
            await daytona.aclose()


@pytest.mark.parametrize("kind", ["local", "daytona"])
async def test_no_secret_reaches_a_log_a_response_an_argv_or_a_sandbox(
    kind: str,
    tmp_path: Path,
    pg_backend: Backend,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = sentinels()
    for name, value in secret.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    origin = Origin(tmp_path / "git")
    [sha] = origin.make("octo-org/site", {"index.html": "<h1>pr</h1>"})
    fake = FakeGitHub(git_root=origin.root, token=secret["GITHUB_TOKEN"])
    async with serve_fake(fake):
        settings = make_settings(
            tmp_path, pg_backend, log_level="DEBUG", log_json=True,
            github_api_url=fake.url, github_clone_base_url=origin.base_url,
            github_repo_allowlist=["octo-org/*"], github_retry_backoff_seconds=0.01,
            # a host without bubblewrap runs user commands un-isolated (production refuses
            # them): the secrets must not reach them either
            local_sandbox_unisolated_commands="run",
        )  # fmt: skip
        assert settings.auth_jwt_secret is not None  # read from the environment
        answers: list[tuple[str, str]] = []  # (who asked, body)
        seen_argv: list[str] = []
        tokens: list[str] = []
        async with (
            provider_for(kind, settings, secret["DAYTONA_API_KEY"]) as (provider, _),
            running_app(settings, provider=provider) as running,
        ):
            seen_argv += await life(running, secret, answers, sha, tokens)
    logs = capfd.readouterr()
    everything = [*answers, ("log", logs.out + logs.err)]
    for name, value in secret.items():
        leaks = [who for who, text in everything if value in text]
        assert leaks == [], f"{name} leaked into {leaks}"
    assert seen_argv == []
    token_leaks = [
        who for who, text in everything
        if any(t in text for t in tokens) and who != "owner"
    ]  # fmt: skip
    assert token_leaks == []
    assert "sentinel-vars=0" in "".join(text for _, text in answers)
    assert "sentinel-vars=" not in "".join(t for _, t in answers).replace("sentinel-vars=0", "")


async def life(
    running: Running,
    secret: dict[str, str],
    answers: list[tuple[str, str]],
    sha: str,
    tokens: list[str],
) -> list[str]:
    """A preview's life, admin and error paths, GitHub deliveries: argv seen holding a secret."""
    c = running.client
    jwt_secret = secret["AUTH_JWT_SECRET"]
    alice, bob = bearer(jwt_secret, "alice"), bearer(jwt_secret, "bob")
    admin = bearer(jwt_secret, "root", role="admin")

    async def ask(who: str, res: httpx.Response) -> httpx.Response:
        answers.append(
            (who, res.text + "\n" + "\n".join(f"{k}: {v}" for k, v in res.headers.items()))
        )
        return res

    body = {"projectId": "p", "files": [{"path": "index.html", "content": "<h1>s</h1>"}],
            "build": PROBE}  # fmt: skip
    res = await ask("owner", await c.post(API, json=body, headers=alice))
    assert res.status_code == 202, res.text
    sandbox_id = res.json()["sandboxId"]
    await builds_settle(running.service)
    status = (await ask("owner", await c.get(f"{API}/status", params={"sandboxId": sandbox_id},
                                              headers=alice))).json()  # fmt: skip
    assert status["status"] == "running", status
    tokens.append(status["previewToken"])
    argv = argv_holding([*secret.values(), status["previewToken"]])
    await ask("owner", await c.post(f"{API}/heartbeat", json={"sandboxId": sandbox_id},
                                    headers=alice))  # fmt: skip
    await ask("bob", await c.get(f"{API}/status", params={"sandboxId": sandbox_id}, headers=bob))
    await ask("bad jwt", await c.get(f"{API}/status", params={"sandboxId": sandbox_id},
                                     headers=bearer("wrong-" + jwt_secret, "alice")))  # fmt: skip
    for path in ("/api/preview/admin/sandboxes", "/api/preview/cleanup",
                 "/api/preview/admin/metrics", "/metrics"):  # fmt: skip
        await ask("admin", await c.get(path, headers=admin))
    await ask("admin", await c.post("/api/preview/cleanup", json={"action": "sync"},
                                    headers=admin))  # fmt: skip
    # GitHub: a bad signature, then a real pull request preview (a clone with the token).
    hook = secret["GITHUB_WEBHOOK_SECRET"]
    await ask("github", await deliver(c, "pull_request", pr_payload("opened", sha),
                                      secret="not-" + hook))  # fmt: skip
    res = await ask("github", await deliver(c, "pull_request", pr_payload("opened", sha),
                                            secret=hook))  # fmt: skip
    assert res.status_code == 202, res.text
    await running.services.github.wait_idle()
    await running.service.wait_idle()
    argv += argv_holding([*secret.values()])
    await ask("owner", await c.post(f"{API}/stop", json={"sandboxId": sandbox_id}, headers=alice))
    return argv


def test_sentinels_are_not_in_this_process_env_by_default() -> None:
    assert not any("SENTINEL" in v for v in os.environ.values())
