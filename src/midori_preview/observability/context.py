"""The request context: every log line of a request carries its `request_id` (the caller's
`X-Request-ID` when it is sane, else a new one; always returned in the response) and the
`sandbox_id` it is about (from the path, the `sandboxId` query parameter or a JSON body's
`sandboxId`), through structlog's context variables. The same middleware times the request for
`midori_preview_http_request_duration_seconds`, labelled by route template, never a raw path."""

from __future__ import annotations

import json
import re
import secrets
from typing import Any
from urllib.parse import parse_qsl

import structlog
from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from midori_preview.clock import SystemClock
from midori_preview.observability.metrics import HTTP_REQUESTS

REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
SANDBOX_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
PEEK_BYTES = 64 * 1024  # JSON bodies up to this size are read (as they pass) for `sandboxId`
# Latency is wall time, whatever clock the service runs on (a test's ManualClock stands still).
WALL = SystemClock()


def request_id_of(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text: str = value.decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(16)


def bind_sandbox_id(value: Any) -> None:
    if isinstance(value, str) and SANDBOX_ID.fullmatch(value):
        structlog.contextvars.bind_contextvars(sandbox_id=value)


async def bind_request_sandbox(request: Request) -> None:
    """A dependency: the sandbox of the path or the query, on the request's logs. (The service
    binds the query's in `RequestContextMiddleware` and the path's in `deps.current_user`: an
    app-wide dependency costs every request, `/healthz` too, a fifth of its time.)"""
    bind_sandbox_id(request.path_params.get("sandbox_id"))
    bind_sandbox_id(request.query_params.get("sandboxId"))


class RequestContextMiddleware:
    """Outermost: binds the request id (and the body's sandbox id) for the request's logs,
    restores the caller's context afterwards, returns `X-Request-ID`, records the latency."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        before = structlog.contextvars.get_contextvars()
        request_id = request_id_of(scope)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        query = scope.get("query_string", b"")
        if b"sandboxId=" in query:
            for name, value in parse_qsl(query.decode("latin-1")):
                if name == "sandboxId":
                    bind_sandbox_id(value)
        status = {"code": 0}
        started = WALL.monotonic()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        try:
            if scope["type"] == "http":
                await self.app(scope, _peeking(scope, receive), send_with_id)
            else:
                await self.app(scope, receive, send)
        finally:
            if scope["type"] == "http":
                # "other": no API route (preview hosts, unknown paths): never a raw path
                route = getattr(scope.get("route"), "path", None) or "other"
                HTTP_REQUESTS.labels(scope["method"], route, str(status["code"] or 500)).observe(
                    WALL.monotonic() - started
                )
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(**before)


def _peeking(scope: Scope, receive: Receive) -> Receive:
    """`receive` that also reads a small JSON body's `sandboxId` as the body passes (no extra
    buffering past PEEK_BYTES, nothing held back from the app)."""
    is_json = any(
        name == b"content-type" and b"json" in value for name, value in scope.get("headers", ())
    )
    if scope.get("method") != "POST" or not is_json:
        return receive
    seen = bytearray()

    async def wrapped() -> Message:
        message = await receive()
        if message["type"] == "http.request" and len(seen) <= PEEK_BYTES:
            seen.extend(message.get("body", b""))
            if not message.get("more_body", False) and len(seen) <= PEEK_BYTES:
                try:
                    data = json.loads(seen)
                except (ValueError, RecursionError):
                    data = None
                if isinstance(data, dict):
                    bind_sandbox_id(data.get("sandboxId"))
        return message

    return wrapped
