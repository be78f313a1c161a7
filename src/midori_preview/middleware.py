"""ASGI middleware: preview hosts go to the preview gateway; oversized bodies are refused."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from midori_preview.errors import PayloadTooLarge


class PreviewHostMiddleware:
    """Requests for `*.{PREVIEW_BASE_DOMAIN}` (HTTP and WebSocket) go to the preview gateway,
    whatever the provider; all else to the API."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI):
        self.app = app
        self.fastapi = fastapi

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = getattr(self.fastapi.state, "services", None)  # None before the lifespan
        if services is not None and scope["type"] in ("http", "websocket"):
            label = services.gateway.match(scope)
            if label is not None:
                await services.gateway.handle(scope, receive, send, label)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """A declared body over `limit` bytes is a 413 before anything reads it."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    err = PayloadTooLarge(f"Request body is larger than {self.limit} bytes.")
                    await JSONResponse(err.body(), status_code=err.http_status)(
                        scope, receive, send
                    )
                    return
        await self.app(scope, receive, send)
