"""Property-based robustness of the HTTP API: schemathesis generates requests, valid and invalid,
for every operation of the app's OpenAPI document and sends them to the app in process (ASGI,
lifespan running; embedded SQLite and in-process store; local sandboxes). No input may produce a
5xx, an undocumented status or content type, or a body that does not match the documented
schema, and every 4xx is our `{"error": {"code", "message", ...}}` envelope.

Bounded and reproducible: a fixed seed, derandomized Hypothesis, no example database, at most
MAX_EXAMPLES fuzzed inputs per operation (CREATE_MAX_EXAMPLES for the route that starts real
builds), plus schemathesis' examples and coverage phases. Every sandbox a request starts is
followed through the routes that need a real one (status, heartbeat, stop, events) and stopped
at once; whatever is still live when the app shuts down is stopped then, and the fixture checks
that nothing is left.

The regression tests at the end pin the bugs this test found."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import text

from midori_preview.app import create_app
from midori_preview.db.engine import make_engine
from midori_preview.previews.schemas import MAX_PROMPT_DEPTH
from tests.conftest import Backend, Running, make_settings, user_headers

FUZZ_USER = "fuzzer"
SEED = 20250612
MAX_EXAMPLES = 25
CREATE_MAX_EXAMPLES = 10  # each one accepted starts a real (local) build
API = "/api/preview/daytona"
CREATE = ("POST", API)
EXPORT = ("POST", "/api/github/repos")

CONFIG = schemathesis.Config.from_dict(
    {
        "seed": SEED,
        "generation": {
            "mode": "all",  # valid and invalid inputs
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
        },
        "phases": {"stateful": {"enabled": False}},  # it is tests/test_api_stateful.py
        "operations": [
            {
                "include-method": CREATE[0],
                "include-path": CREATE[1],
                "generation": {"max-examples": CREATE_MAX_EXAMPLES},
            }
        ],
    }
)


# --- checks ----------------------------------------------------------------------------------


def no_server_error(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """`not_a_server_error`, but for the one 5xx this app gives by design: GitHub is not
    configured here (no network), so the export route answers a valid request with its
    documented 503 `github_not_configured`."""
    if (
        (case.method.upper(), case.path) == EXPORT
        and response.status_code == 503
        and response.json()["error"]["code"] == "github_not_configured"
    ):
        return None
    return not_a_server_error(ctx, response, case)


def error_envelope(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every 4xx answers `{"error": {"code": str, "message": str, ...}}`."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{response.status_code} without a JSON body: {response.text!r}"
        ) from None
    error = body.get("error") if isinstance(body, dict) else None
    if not (
        isinstance(error, dict)
        and isinstance(error.get("code"), str)
        and error["code"]
        and isinstance(error.get("message"), str)
    ):
        raise AssertionError(f"{response.status_code} is not our error envelope: {body!r}")
    return None


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_envelope,
]


# --- the app under test ------------------------------------------------------------------------


async def stop_everything(app: FastAPI) -> None:
    """Stop every live sandbox, then cancel whatever build is still in flight."""
    services = app.state.services
    previews = services.previews
    for row in await services.db.sandboxes.holding_rows():
        await previews.stop(row.id, reason="admin")
    await previews.shutdown()


def stopping_everything_at_shutdown(app: FastAPI) -> FastAPI:
    """`app`, whose lifespan stops whatever is still live before the app's own shutdown.
    (schemathesis runs the lifespan: it starts it for the first request and ends it after the
    test.)"""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            try:
                yield state
            finally:
                await stop_everything(app)

    app.router.lifespan_context = lifespan
    return app


async def live_rows(database_url: str) -> list[tuple[str, str]]:
    engine = make_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text("SELECT id, status FROM sandboxes WHERE status NOT IN ('stopped', 'error')")
            )
            return [(row[0], row[1]) for row in rows]
    finally:
        await engine.dispose()


@pytest.fixture
def fuzz_schema(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[schemathesis.BaseSchema]:
    # schemathesis 4.32 renames the test node through `_nodeid`, which pytest 9 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(
        tmp,
        Backend("embedded", None, None),
        # No network: a git source may only name a (missing) local repository.
        git_allowed_url_prefixes=[f"file://{tmp}/repos/"],
    )
    app = stopping_everything_at_shutdown(create_app(settings))
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    # schemathesis has ended the lifespan by now: nothing may be left running.
    assert asyncio.run(live_rows(settings.effective_database_url)) == []
    sandboxes = settings.data_dir / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []


schema = schemathesis.pytest.from_fixture("fuzz_schema")


def follow_up(case: schemathesis.Case[Any], sandbox_id: str, headers: dict[str, str]) -> None:
    """The routes that need a real sandbox, on the one just created: its status (both ways), a
    heartbeat, the stop, its event stream (finite once stopped) and a heartbeat after it."""
    operations = case.operation.schema

    def call(method: str, path: str, **parts: Any) -> schemathesis.Response:
        made: schemathesis.Case[Any] = operations[path][method].Case(**parts)
        return made.call_and_validate(headers=headers, checks=CHECKS)

    call("GET", f"{API}/status", query={"sandboxId": sandbox_id})
    call("GET", f"{API}/{{sandbox_id}}", path_parameters={"sandbox_id": sandbox_id})
    call("POST", f"{API}/heartbeat", body={"sandboxId": sandbox_id, "visible": True})
    assert call("POST", f"{API}/stop", body={"sandboxId": sandbox_id}).status_code == 200
    events = call("GET", f"{API}/events", query={"sandboxId": sandbox_id})
    assert events.status_code == 200 and "event: status" in events.text
    gone = call("POST", f"{API}/heartbeat", body={"sandboxId": sandbox_id, "visible": True})
    assert gone.status_code == 410


@schema.parametrize()
def test_api_fuzz(case: schemathesis.Case[Any]) -> None:
    headers = {"X-User-Id": FUZZ_USER}
    if "admin" in (case.operation.tags or []):
        headers["X-User-Role"] = "admin"  # else every admin route is a plain 403
    response = case.call_and_validate(headers=headers, checks=CHECKS)
    if (case.method.upper(), case.path) == CREATE and response.status_code in (200, 202):
        follow_up(case, response.json()["sandboxId"], headers)


# --- regressions: what this test found ---------------------------------------------------------


async def post_raw(running: Running, path: str, body: bytes) -> httpx.Response:
    headers = {**user_headers(FUZZ_USER), "content-type": "application/json"}
    return await running.client.post(path, content=body, headers=headers)


def assert_validation_error(res: httpx.Response, *expected: str) -> None:
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["code"] == "validation_error", error
    for part in expected:
        assert part in error["message"], error


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"sandboxId": "\xff\xfe"}', "not valid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"sandboxId": ' + b"1" * 5000 + b"}", "could not be decoded"),
    ],
    ids=["not-utf8", "too-deep-for-the-parser", "integer-too-long"],
)
async def test_a_json_body_that_cannot_be_decoded_is_a_422(
    service_app: Running, body: bytes, problem: str
) -> None:
    """It was FastAPI's bare 400 `http_error`, documented nowhere."""
    for path in (API, f"{API}/stop", f"{API}/heartbeat", "/api/preview/cleanup"):
        assert_validation_error(await post_raw(service_app, path, body), problem)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"projectId": "p", "promptJson": {"name": "\\ud800"}}', "promptJson"),
        (b'{"projectId": "p", "promptJson": {"\\udfff": 1}}', "promptJson"),
        (
            b'{"projectId": "p", "files": [{"path": "index.html", "content": "a\\ud800"}]}',
            "files.0.content",
        ),
    ],
    ids=["prompt-value", "prompt-key", "file-content"],
)
async def test_a_lone_surrogate_is_a_422(service_app: Running, body: bytes, field: str) -> None:
    """JSON can escape a lone surrogate, but it is no text: it was a 500 (UnicodeEncodeError
    while hashing the source)."""
    assert_validation_error(await post_raw(service_app, API, body), field, "lone surrogate")


async def test_a_prompt_json_nested_too_deeply_is_a_422(service_app: Running) -> None:
    """A promptJson nested ~255 levels deep passed validation and then crashed serializing
    (500 `Maximum serialization depth exceeded`), on both routes that take one."""

    def nested(depth: int) -> dict[str, Any]:
        # `depth` levels of objects and arrays, the promptJson object itself included
        return {"name": "x", "a": json.loads("[" * (depth - 1) + "]" * (depth - 1))}

    h = user_headers(FUZZ_USER)
    for depth in (MAX_PROMPT_DEPTH + 1, 300):
        body = {"projectId": "p", "promptJson": nested(depth)}
        res = await service_app.client.post(API, json=body, headers=h)
        assert_validation_error(res, "promptJson", f"deeper than {MAX_PROMPT_DEPTH} levels")
        export = {**body, "name": "site"}
        res = await service_app.client.post("/api/github/repos", json=export, headers=h)
        assert_validation_error(res, f"deeper than {MAX_PROMPT_DEPTH} levels")
    ok = {"projectId": "p", "promptJson": nested(MAX_PROMPT_DEPTH)}
    res = await service_app.client.post(API, json=ok, headers=h)
    assert res.status_code == 202, res.text


async def test_a_malformed_last_event_id_is_a_422(service_app: Running) -> None:
    """A Last-Event-ID that is no stream id reached the event store: a 200 whose stream then
    crashed (`Invalid stream ID`), with no event in it."""
    body = {"projectId": "p", "promptJson": {"name": "x"}, "template": "static"}
    h = user_headers(FUZZ_USER)
    created = await service_app.client.post(API, json=body, headers=h)
    assert created.status_code == 202, created.text
    sandbox_id = created.json()["sandboxId"]
    stopped = await service_app.client.post(
        f"{API}/stop", json={"sandboxId": sandbox_id}, headers=h
    )
    assert stopped.status_code == 200, stopped.text
    url = f"{API}/events?sandboxId={sandbox_id}"
    for bad in ("garbage", "-1", "1-x", "1-2-3", "9" * 20):
        res = await service_app.client.get(url, headers={**h, "Last-Event-ID": bad})
        assert_validation_error(res, "last-event-id")
    for good in ("", "0", "0-0", "1749720600351-0", "9" * 19):
        res = await service_app.client.get(url, headers={**h, "Last-Event-ID": good})
        assert res.status_code == 200, (good, res.text)
        assert "event: status" in res.text, (good, res.text)


async def test_a_usage_report_up_to_the_last_representable_day(service_app: Running) -> None:
    for days in ("from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=0001-01-02"):
        res = await service_app.client.get(
            f"/api/preview/usage/report?{days}", headers=user_headers("root", admin=True)
        )
        assert res.status_code == 422, res.text
        assert res.json()["error"]["code"] == "validation_error"
