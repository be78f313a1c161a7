"""Every log line of a request carries its request id (the caller's `X-Request-ID` when sane,
returned in the response) and the sandbox id it is about: from the path, the query or a JSON
body. The caller's own log context is left as it was."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import structlog
from fastapi import Depends, FastAPI, Request
from structlog.testing import capture_logs

from midori_preview.logging import configure_logging
from midori_preview.observability.context import RequestContextMiddleware, bind_request_sandbox
from tests.conftest import Backend, make_settings, running_app, user_headers
from tests.support.clock import ManualClock

log = structlog.get_logger("test")


def tiny_app() -> FastAPI:
    app = FastAPI(dependencies=[Depends(bind_request_sandbox)])

    @app.get("/things/{sandbox_id}")
    async def by_path(sandbox_id: str) -> dict[str, str]:
        log.info("by_path")
        return {}

    @app.get("/things")
    async def by_query() -> dict[str, str]:
        log.info("by_query")
        return {}

    @app.post("/things")
    async def by_body(request: Request) -> dict[str, str]:
        await request.json()
        log.info("by_body")
        return {}

    app.add_middleware(RequestContextMiddleware)
    return app


def lines(entries: list[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [e for e in entries if e["event"] == event]


async def test_request_and_sandbox_ids_on_every_line_and_returned() -> None:
    app = tiny_app()
    configure_logging("DEBUG")  # another test's app may have left a WARNING filter
    structlog.contextvars.bind_contextvars(caller="kept")
    try:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://t"
            ) as client:
                a = await client.get("/things/sbx1", headers={"X-Request-ID": "req-123"})
                b = await client.get("/things", params={"sandboxId": "sbx2"})
                c = await client.post("/things", json={"sandboxId": "sbx3", "visible": True})
                d = await client.get("/things", headers={"X-Request-ID": "bad id\twith tab"})
        # the caller's context is as it was: nothing of the requests stayed bound
        assert structlog.contextvars.get_contextvars() == {"caller": "kept"}
    finally:
        structlog.contextvars.clear_contextvars()
        configure_logging("WARNING")
    assert a.headers["x-request-id"] == "req-123"
    assert len(b.headers["x-request-id"]) == 32  # generated
    assert d.headers["x-request-id"] != "bad id\twith tab" and len(d.headers["x-request-id"]) == 32
    (pa,) = lines(entries, "by_path")
    assert (pa["request_id"], pa["sandbox_id"]) == ("req-123", "sbx1")
    pb, pd = lines(entries, "by_query")
    assert pd["request_id"] == d.headers["x-request-id"] and "sandbox_id" not in pd
    assert (pb["request_id"], pb["sandbox_id"]) == (b.headers["x-request-id"], "sbx2")
    (pc,) = lines(entries, "by_body")
    assert (pc["request_id"], pc["sandbox_id"]) == (c.headers["x-request-id"], "sbx3")
    # each request its own id, none leaking into the next
    assert (
        len({a.headers["x-request-id"], b.headers["x-request-id"], c.headers["x-request-id"]}) == 3
    )


async def test_the_service_logs_carry_the_request_id(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    """Through the real app: the create's and the stop's lines carry the caller's request id and
    the sandbox's id; the error envelope answers carry the id header too."""
    settings = make_settings(tmp_path, pg_backend, log_level="DEBUG")
    async with running_app(settings, clock=clock) as running:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
            res = await running.client.post(
                "/api/preview/daytona",
                json={"projectId": "p", "files": [{"path": "index.html", "content": "hi"}]},
                headers={**user_headers("alice"), "X-Request-ID": "create-1"},
            )
            assert res.status_code == 202, res.text
            sandbox_id = res.json()["sandboxId"]
            await running.wait_until(sandbox_id, "running")
            stop = await running.client.post(
                "/api/preview/daytona/stop",
                json={"sandboxId": sandbox_id},
                headers={**user_headers("alice"), "X-Request-ID": "stop-1"},
            )
            assert stop.status_code == 200
            missing = await running.client.get(
                "/api/preview/daytona/status?sandboxId=nope", headers=user_headers("bob")
            )
    assert res.headers["x-request-id"] == "create-1"
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 32
    requested = [e for e in entries if e["event"] == "sandbox.requested"]
    assert requested and all(e["request_id"] == "create-1" for e in requested)
    stopped = [e for e in entries if e.get("request_id") == "stop-1"]
    assert stopped, entries
    assert all(e.get("sandbox_id") == sandbox_id for e in stopped), stopped
