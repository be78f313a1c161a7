"""File paths and contents fuzzed with hypothesis (quotes, `$()`, backticks, a line `EOF`, CR/LF,
NUL, `..`, absolute paths, very long names, binary): each create either puts exactly those bytes
at exactly that path inside the sandbox's workspace, or answers 422 — and nothing outside the
workspace is touched. On both providers: local, and Daytona through the real SDK against the
emulator, whose bulk upload is as unconfined as the real daemon's (tests/support/daytona/
files.py): there, "nothing outside" means nothing in the sandbox outside the workdir beyond what
a plain preview has, and nothing written outside /home/daytona. MP_FUZZ_EXAMPLES sets the
number of cases per provider (default 25)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from midori_preview.providers.daytona import DaytonaProvider
from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.providers.test_daytona_provider import make_config
from tests.support.clock import ManualClock
from tests.support.daytona import DaytonaEmulator
from tests.support.waiting import builds_settle

EXAMPLES = int(os.environ.get("MP_FUZZ_EXAMPLES", "25"))
NASTY = ["'", '"', "$(touch /tmp/pwned)", "`id`", "\nEOF\n", "\r\n", "\x00", "..", "/", "\\",
         " ", "*", "~", "-rf", "é", "😀", "%s", ";", "|", "&"]  # fmt: skip
segment = st.one_of(
    st.sampled_from(["a", "b.txt", "index.html", "..", ".", "", "EOF", "x" * 300]),
    st.lists(st.sampled_from(NASTY) | st.characters(blacklist_categories=("Cs",)), max_size=6).map(
        "".join
    ),
)
paths = st.lists(segment, min_size=1, max_size=4).map("/".join) | st.sampled_from(
    ["/etc/passwd", "../outside.txt", "a/../../x", "/" + "y" * 2000, "ok/" + "z" * 255 + ".txt"]
)
contents = st.binary(max_size=2048) | st.lists(
    st.sampled_from(NASTY) | st.characters(blacklist_categories=("Cs",)), max_size=40
).map(lambda parts: "".join(parts).encode())


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def tree(root: Path, skip: Path) -> set[str]:
    return {
        str(p.relative_to(root)) for p in root.rglob("*") if skip not in p.parents and p != skip
    }


@dataclass
class Target:
    """Where a provider keeps a sandbox's files, as seen from this host."""

    box: Path  # what the local provider may write to (its sandboxes directory)
    emulator: DaytonaEmulator | None = None
    baseline: frozenset[str] = frozenset()  # what a plain preview has outside its workdir

    def workspace(self, running: Running, sandbox_id: str) -> Path:
        if self.emulator is None:
            return self.box / sandbox_id / "work"
        [provider_id] = [
            pid
            for pid, view in self.emulator.sandboxes.items()
            if view.labels.get("midori-preview/sandbox-id") == sandbox_id
        ]
        return self.emulator.sandbox_home(provider_id) / "app"  # the provider's workdir

    def outside(self, workspace: Path) -> set[str]:
        """Daytona: what the sandbox holds outside its workdir (rootfs: outside /home/daytona)."""
        home = workspace.parent
        found = tree(home, workspace)
        rootfs = home.with_name(home.name + ".rootfs")  # see tests/support/daytona/files.py
        if rootfs.exists():
            found |= {f"/{p}" for p in tree(rootfs, rootfs / "none")}
        return found - self.baseline


@pytest.mark.parametrize("kind", ["local", "daytona"])
def test_paths_and_bytes_round_trip_or_422(
    tmp_path: Path,
    pg_backend: Backend,
    loop: asyncio.AbstractEventLoop,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    app_settings = make_settings(
        tmp_path, pg_backend, max_concurrent_sandboxes_per_user=1, create_rate_per_minute=100_000
    )
    target = Target(tmp_path / "data" / "sandboxes")
    with contextlib.ExitStack() as stack:
        provider = None
        if kind == "daytona":
            target.emulator = stack.enter_context(DaytonaEmulator())
            config = make_config(target.emulator, deployment=app_settings.preview_deployment)
            provider = DaytonaProvider(config)
            stack.callback(lambda: loop.run_until_complete(provider.aclose()))
        ctx = running_app(app_settings, clock=ManualClock(), provider=provider)
        running: Running = loop.run_until_complete(ctx.__aenter__())
        try:
            fuzz(running, target, loop, tmp_path)
        finally:
            loop.run_until_complete(ctx.__aexit__(None, None, None))


def fuzz(running: Running, target: Target, loop: asyncio.AbstractEventLoop, tmp: Path) -> None:
    outcomes: dict[str, int] = {}
    before = tree(tmp, target.box)
    if target.emulator is not None:  # what a plain preview has outside its workdir
        plain = one(running, target, "plain.txt", b"plain", baseline=True)
        sandbox_id = loop.run_until_complete(plain)
        workspace = target.workspace(running, sandbox_id)
        target.baseline = frozenset(target.outside(workspace))

    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(path=paths, content=contents)
    # Each run has at least one of each outcome (the random ones may all be refused).
    @example(path="a b/'q' $(touch x) `id` é😀.txt", content=b"\x00\xff\r\nEOF\n")
    @example(path="../outside.txt", content=b"x")
    def case(path: str, content: bytes) -> None:
        outcome = loop.run_until_complete(one(running, target, path, content))
        outcome = "422" if outcome == "422" else "round trip"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    case()
    assert tree(tmp, target.box) == before  # nothing written outside the workspaces
    assert not Path("/tmp/pwned").exists()
    print(f"\nfuzz outcomes ({'daytona' if target.emulator else 'local'}): {outcomes}")
    assert outcomes.get("round trip", 0) > 0 and outcomes.get("422", 0) > 0, outcomes


async def one(
    running: Running, target: Target, path: str, content: bytes, *, baseline: bool = False
) -> str:
    """One create with `path` holding `content`: "422", or the sandbox id once checked."""
    body: dict[str, Any] = {
        "projectId": "fuzz",
        "replace": True,
        "files": [
            {"path": "index.html", "content": "<h1>fuzz</h1>"},
            {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"},
        ],
    }
    res = await running.client.post("/api/preview/daytona", json=body,
                                    headers=user_headers("alice"))  # fmt: skip
    if res.status_code in (413, 422):
        assert res.json()["error"]["code"] in ("validation_error", "payload_too_large"), res.text
        return "422"
    assert res.status_code == 202, res.text
    sandbox_id: str = res.json()["sandboxId"]
    await builds_settle(running.service)
    st_res = await running.client.get(
        "/api/preview/daytona/status", params={"sandboxId": sandbox_id}, headers=user_headers()
    )
    assert st_res.json()["status"] == "running", st_res.text
    workspace = target.workspace(running, sandbox_id)
    found = [p for p in workspace.rglob("*") if p.is_file() and p.read_bytes() == content]
    written = (workspace / path.lstrip("/")).resolve()
    assert workspace.resolve() in written.parents, (path, written)
    assert written.is_file() and written.read_bytes() == content, (path, found)
    if target.emulator is not None and not baseline:
        assert target.outside(workspace) == set(), path  # nothing else in the sandbox
    return sandbox_id


# --- regressions: what this test found ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "daytona"])
def test_a_path_the_toolbox_would_change_is_a_422(
    tmp_path: Path,
    pg_backend: Backend,
    loop: asyncio.AbstractEventLoop,
    kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Daytona's daemon `TrimSpace`s each destination: `a.txt ` was written to `a.txt`, and `a/ `
    failed the build's upload (`provider_rejected`); a DEL (0x7f) in a path failed it too (the
    SDK sends the path in a multipart header, which aiohttp refuses) — while the local provider
    kept the names. Both refuse such paths now, before anything starts."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    app_settings = make_settings(tmp_path, pg_backend, create_rate_per_minute=100_000)
    with contextlib.ExitStack() as stack:
        provider = None
        if kind == "daytona":
            emulator = stack.enter_context(DaytonaEmulator())
            provider = DaytonaProvider(make_config(emulator, deployment="fuzz"))
            stack.callback(lambda: loop.run_until_complete(provider.aclose()))
        ctx = running_app(app_settings, clock=ManualClock(), provider=provider)
        running: Running = loop.run_until_complete(ctx.__aenter__())
        try:
            for path in ("a.txt ", "dir/ ", "b.txt\u00a0", "c.txt\u3000", "d\x7fe.txt", "f\x85g"):
                body = {"projectId": "ws", "replace": True,
                        "files": [{"path": "index.html", "content": "x"},
                                  {"path": path, "content": "bytes"}]}  # fmt: skip
                res = loop.run_until_complete(
                    running.client.post("/api/preview/daytona", json=body, headers=user_headers())
                )
                assert res.status_code == 422, (path, res.text)
                error = res.json()["error"]
                assert error["code"] == "validation_error", error
                assert "white space" in error["message"] or "control" in error["message"], error
        finally:
            loop.run_until_complete(ctx.__aexit__(None, None, None))
