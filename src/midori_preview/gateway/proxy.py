"""HTTP forwarding from a preview host to the sandbox's server (its `Upstream`), streamed both
ways: the request body goes up as it arrives (under a size cap), the answer comes back as it is
made, byte for byte (a compressed answer stays compressed, `Range` and `HEAD` work as the server
does them). Hop-by-hop headers stay on their hop; the Midori app's session cookies and any
`Authorization` never reach code from the project; the project never sets a cookie beyond its
own host; answers are never cached by anyone else."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx
from starlette.types import Message, Receive, Scope, Send

from midori_preview.gateway import reload
from midori_preview.providers.base import Upstream

TOKEN_HEADER = "x-daytona-preview-token"  # noqa: S105 (a header name: ours, never forwarded)
MAX_BODY = 10 * 1024 * 1024
SESSION_COOKIE = re.compile(r"^(__Secure-|__Host-)?(next-auth\.|authjs\.)|^__Host-", re.I)
DOMAIN_ATTR = re.compile(r";\s*domain\s*=", re.I)
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Request headers that describe the client's own WebSocket handshake (the gateway makes its own).
WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip


class BodyTooLarge(Exception):
    """The request body is over the cap (declared, or counted while it streamed)."""


class UpstreamUnavailable(Exception):
    """The sandbox's server did not answer (nothing was sent to the client yet)."""


class ClientGone(Exception):
    """The client went away while its request body was being read."""


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def forwarded_headers(
    raw: Iterable[tuple[bytes, bytes]], upstream: Mapping[str, str], *, drop: frozenset[str]
) -> list[tuple[str, str]]:
    """Request headers for the sandbox's server: none of `drop` or of the names the client's
    `Connection` header lists, no preview token, no `Authorization`, no session cookies of the
    Midori app (a cookie scoped to a parent domain reaches preview hosts too); then the headers
    that authorize the gateway at the upstream."""
    items = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw]
    listed = {
        name.strip()
        for key, value in items
        if key == "connection"
        for name in value.lower().split(",")
    }
    skip = drop | listed | {TOKEN_HEADER, "authorization"} | {k.lower() for k in upstream}
    out: list[tuple[str, str]] = []
    for key, value in items:
        if key in skip:
            continue
        if key == "cookie":
            kept = [
                c for c in value.split(";") if c.strip() and not SESSION_COOKIE.match(c.strip())
            ]
            if not kept:
                continue
            value = ";".join(kept).strip()
        out.append((key, value))
    return out + list(upstream.items())


def answer_headers(res: httpx.Response, base: httpx.URL) -> list[tuple[bytes, bytes]]:
    """The server's answer headers as they go to the client: hop-by-hop ones dropped, cookies for
    a parent domain dropped (the project could plant or overwrite the user's session on the real
    app), redirects to the upstream's own address turned into paths on the preview host, and
    nobody but the viewer keeps a copy."""
    listed = {n.strip() for n in res.headers.get("connection", "").lower().split(",")}
    out: list[tuple[bytes, bytes]] = []
    for key, value in res.headers.multi_items():
        name = key.lower()
        if name in HOP_BY_HOP or name in listed or name == "cache-control":
            continue
        if name == "set-cookie" and DOMAIN_ATTR.search(value):
            continue
        if name == "location":
            value = _local_location(value, base)
        out.append((name.encode("latin-1"), value.encode("latin-1")))
    out.append((b"cache-control", b"private, no-store"))
    if "referrer-policy" not in res.headers:  # the host name carries the viewer's credential
        out.append((b"referrer-policy", b"same-origin"))
    return out


def _local_location(value: str, base: httpx.URL) -> str:
    prefix = base.path.rstrip("/")
    origin = f"{base.scheme}://{base.netloc.decode('ascii')}"
    for start in (origin + prefix, prefix if prefix else None):
        if start is not None and (value == start or value.startswith(start + "/")):
            return value[len(start) :] or "/"
    return value


def target(base: str, scope: Scope) -> str:
    """The upstream URL of this request: the upstream's base path, then the request's own raw
    path and query."""
    raw = scope.get("raw_path") or scope["path"].encode()
    url = base.rstrip("/") + raw.decode("latin-1")
    query = scope.get("query_string", b"")
    return f"{url}?{query.decode('latin-1')}" if query else url


async def _body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _prepend(first: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


class HttpProxy:
    """One HTTP client for every upstream (loopback servers, Daytona's preview proxy)."""

    def __init__(self, *, max_body: int = MAX_BODY) -> None:
        self.max_body = max_body
        # No read timeout: a dev server's event stream may stay quiet for minutes; the request
        # ends when the client goes away (see `_relay`).
        timeout = httpx.Timeout(connect=5.0, read=None, write=60.0, pool=10.0)
        self.client = httpx.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        *,
        browser: bool,
        inject: bytes | None = None,
    ) -> None:
        """Forward one request. Raises BodyTooLarge or UpstreamUnavailable before anything was
        sent to the client (the gateway answers those); a browser's page that the upstream
        answers 502 counts as unavailable too (it gets a page, not a bare gateway error).
        `inject`: a tag added to an HTML page (the reload script of live updates); its page is
        asked for uncompressed."""
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise BodyTooLarge
        has_body = (declared not in (None, b"0")) or header(scope, b"transfer-encoding")
        headers = forwarded_headers(scope["headers"], upstream.headers, drop=HOP_BY_HOP)
        if inject is not None:
            headers = [(k, v) for k, v in headers if k != "accept-encoding"]
            headers.append(("accept-encoding", "identity"))
        request = self.client.build_request(
            scope["method"],
            target(upstream.url, scope),
            headers=headers,
            content=_body(receive, self.max_body) if has_body else None,
        )
        try:
            res = await self.client.send(request, stream=True)
        except ClientGone:
            return
        except httpx.HTTPError:
            raise UpstreamUnavailable from None
        try:
            if browser and res.status_code == 502:
                raise UpstreamUnavailable
            out = answer_headers(res, httpx.URL(upstream.url))
            chunks = res.aiter_raw()
            if inject is not None and reload.injectable(scope["method"], res.status_code, out):
                rest = await self._inject(res.status_code, chunks, send, out, inject)
                if rest is None:
                    return
                chunks = rest
            start: Message = {"type": "http.response.start", "status": res.status_code}
            await send({**start, "headers": out})
            await self._relay(chunks, receive, send)
        finally:
            await res.aclose()

    async def _inject(
        self,
        status: int,
        chunks: AsyncIterator[bytes],
        send: Send,
        out: list[tuple[bytes, bytes]],
        script: bytes,
    ) -> AsyncIterator[bytes] | None:
        """Send the page with `script` added (None: nothing left to relay); a page larger than
        reload.MAX_HTML goes on as it is (what is left to relay: all of it, nothing sent yet)."""
        read: list[bytes] = []
        size = 0
        async for chunk in chunks:
            read.append(chunk)
            size += len(chunk)
            if size > reload.MAX_HTML:
                return _prepend(read, chunks)
        page = b"".join(read)
        body = reload.add_script(page, script) or page
        start: Message = {"type": "http.response.start", "status": status}
        await send({**start, "headers": reload.with_length(out, len(body))})
        await send({"type": "http.response.body", "body": body})
        return None

    async def _relay(self, chunks: AsyncIterator[bytes], receive: Receive, send: Send) -> None:
        """Stream the answer until it ends or the client goes away (then stop reading it)."""

        async def pump() -> None:
            with contextlib.suppress(httpx.HTTPError):  # cut short: the client sees it end
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        tasks: list[asyncio.Task[Any]] = [
            asyncio.create_task(pump()),
            asyncio.create_task(_until_disconnect(receive)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.client.aclose()
