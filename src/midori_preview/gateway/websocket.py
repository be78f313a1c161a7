"""WebSocket pass-through from a preview host to the sandbox's server: what a dev server's hot
reload (Vite, Next.js) needs. The gateway opens its own connection to the upstream (with the
upstream's headers, the client's subprotocols and the client's headers filtered as for HTTP),
accepts the client with the subprotocol the upstream chose, then relays messages both ways until
either side closes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from midori_preview.gateway.proxy import HOP_BY_HOP, MAX_BODY, WS_HANDSHAKE, forwarded_headers
from midori_preview.gateway.proxy import target as http_target
from midori_preview.logging import get_logger
from midori_preview.providers.base import Upstream

log = get_logger(__name__)

OPEN_TIMEOUT = 10.0
# Close codes a close frame may carry; others (1005 no status, 1006 abnormal…) become these.
SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)}) | frozenset(range(3000, 5000))


def ws_target(base: str, scope: Scope) -> str:
    url = http_target(base, scope)
    return "ws" + url[4:] if url.startswith("http") else url


def subprotocols(scope: Scope) -> list[Subprotocol]:
    return [Subprotocol(p) for p in scope.get("subprotocols", ())]


def _close_code(code: int | None) -> int:
    if code in SENDABLE:
        return int(code)  # type: ignore[arg-type]
    return 1000 if code in (None, 1005) else 1011


async def deny(send: Send, code: int = 1008) -> None:
    """Refuse a WebSocket before accepting it (the client sees an HTTP 403)."""
    await send({"type": "websocket.close", "code": code})


async def pass_websocket(scope: Scope, receive: Receive, send: Send, upstream: Upstream) -> None:
    """Connect to the upstream, accept the client, relay until one side closes."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers = forwarded_headers(scope["headers"], upstream.headers, drop=HOP_BY_HOP | WS_HANDSHAKE)
    try:
        ws = await connect(
            ws_target(upstream.url, scope),
            additional_headers=headers,
            subprotocols=subprotocols(scope) or None,
            user_agent_header=None,  # the client's own User-Agent went with `headers`
            proxy=None,  # never through a proxy from the environment
            open_timeout=OPEN_TIMEOUT,
            max_size=MAX_BODY,
        )
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        log.info("gateway.websocket_refused", error=type(exc).__name__)
        await deny(send, 1011)
        return
    try:
        await send({"type": "websocket.accept", "subprotocol": ws.subprotocol})
        await _relay(ws, receive, send)
    finally:
        await ws.close()


async def _relay(ws: ClientConnection, receive: Receive, send: Send) -> None:
    async def up() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                await ws.close(_close_code(message.get("code")))
                return
            if message["type"] == "websocket.receive":
                data = message.get("bytes")
                await ws.send(data if data is not None else message.get("text") or "")

    async def down() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in ws:
                if isinstance(data, bytes):
                    await send({"type": "websocket.send", "bytes": data})
                else:
                    await send({"type": "websocket.send", "text": data})
        code = ws.close_code
        reason = ws.close_reason or ""
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "websocket.close", "code": _close_code(code), "reason": reason})

    await _first_of(up, down)


async def _first_of(*work: Callable[[], Awaitable[None]]) -> None:
    tasks: list[asyncio.Task[Any]] = [asyncio.ensure_future(w()) for w in work]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
