"""Request bodies are counted and timed as they stream in, whatever their framing: a body past the
limit is a 413 once the limit is crossed (a chunked body declares no length, so the declared-length
check of `middleware.BodyLimitMiddleware` cannot see it), and a body still arriving after
REQUEST_BODY_TIMEOUT_SECONDS (a slow drip that would hold a worker and its buffer) is a 408.
Nothing past the limit is ever held in memory by the app."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from midori_preview.errors import PayloadTooLarge, PreviewError


class RequestTimeout(PreviewError):
    code = "request_timeout"
    status = 408


class BodyRefused(HTTPException):
    """Raised from `receive`: an HTTPException, so that FastAPI's body parsing passes it on as
    it is (it turns any other error there into a 400); answered by `install`'s handler."""

    def __init__(self, error: PreviewError) -> None:
        super().__init__(error.http_status, error.message)
        self.error = error


def install(app: FastAPI) -> None:
    """Answer a refused body with our envelope (and close the connection: the rest of the body
    is never read)."""

    async def refused(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyRefused)
        return JSONResponse(
            exc.error.body(), status_code=exc.error.http_status, headers={"Connection": "close"}
        )

    app.add_exception_handler(BodyRefused, refused)


class BodyGuardMiddleware:
    def __init__(self, app: ASGIApp, *, limit: int, timeout: float) -> None:
        self.app = app
        self.limit = limit
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout
        received = 0
        started = False

        async def guarded_receive() -> Message:
            nonlocal received
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyRefused(
                    RequestTimeout(f"The request body took longer than {self.timeout:g} s.")
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyRefused(
                        PayloadTooLarge(f"Request body is larger than {self.limit} bytes.")
                    )
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except BodyRefused as refused:
            if started:  # the app answered already (it read no more than it needed)
                return
            err = refused.error
            response = JSONResponse(
                err.body(), status_code=err.http_status, headers={"Connection": "close"}
            )
            await response(scope, receive, send)
