"""File paths and contents fuzzed with hypothesis (quotes, `$()`, backticks, a line `EOF`, CR/LF,
NUL, `..`, absolute paths, very long names, binary): each create either puts exactly those bytes
at exactly that path inside the sandbox's workspace, or answers 422 — and nothing outside the
workspace is touched. Local provider; MP_FUZZ_EXAMPLES sets the number of cases (default 25)."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Backend, Running, make_settings, running_app, user_headers
from tests.support.clock import ManualClock
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


def test_paths_and_bytes_round_trip_or_422(
    tmp_path: Path, pg_backend: Backend, loop: asyncio.AbstractEventLoop
) -> None:
    app_settings = make_settings(
        tmp_path, pg_backend, max_concurrent_sandboxes_per_user=1, create_rate_per_minute=100_000
    )
    box = tmp_path / "data" / "sandboxes"
    ctx = running_app(app_settings, clock=ManualClock())
    running: Running = loop.run_until_complete(ctx.__aenter__())
    outcomes: dict[str, int] = {}
    try:
        before = tree(tmp_path, box)

        @settings(max_examples=EXAMPLES, deadline=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(path=paths, content=contents)
        def case(path: str, content: bytes) -> None:
            outcome = loop.run_until_complete(one(running, box, path, content))
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        case()
        assert tree(tmp_path, box) == before  # nothing written outside the workspaces
        assert not Path("/tmp/pwned").exists()
        print(f"\nfuzz outcomes: {outcomes}")
        assert outcomes.get("round trip", 0) > 0 and outcomes.get("422", 0) > 0, outcomes
    finally:
        loop.run_until_complete(ctx.__aexit__(None, None, None))


async def one(running: Running, box: Path, path: str, content: bytes) -> str:
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
    sandbox_id = res.json()["sandboxId"]
    await builds_settle(running.service)
    st_res = await running.client.get(
        "/api/preview/daytona/status", params={"sandboxId": sandbox_id}, headers=user_headers()
    )
    assert st_res.json()["status"] == "running", st_res.text
    workspace = box / sandbox_id / "work"
    found = [p for p in workspace.rglob("*") if p.is_file() and p.read_bytes() == content]
    target = (workspace / path.lstrip("/")).resolve()
    assert workspace.resolve() in target.parents, (path, target)
    assert target.read_bytes() == content, (path, found)
    return "round trip"
