"""The preview proxy for local sandboxes: an ASGI middleware in front of the API that serves
`http://{port}-{sandboxId}.{PREVIEW_BASE_DOMAIN}/…` from the sandbox's server, but only for
requests that carry the sandbox's credential (token header, or a signed host label)."""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from midori_preview.providers.local.provider import LocalProvider
from midori_preview.providers.local.signing import parse_label, verify_label

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

TOKEN_HEADER = b"x-daytona-preview-token"
MAX_BODY = 10 * 1024 * 1024
SESSION_COOKIE = re.compile(r"^(__Secure-|__Host-)?(next-auth\.|authjs\.)|^__Host-", re.I)
DOMAIN_ATTR = re.compile(r";\s*domain\s*=", re.I)
HOP_BY_HOP = {
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailers", b"transfer-encoding", b"upgrade", b"host", TOKEN_HEADER,
}  # fmt: skip


class PreviewProxy:
    def __init__(self, provider: LocalProvider, base_domain: str) -> None:
        self.provider = provider
        self.suffix = "." + base_domain.lower()
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=5.0), trust_env=False)

    def match(self, scope: Scope) -> str | None:
        """The preview host label of this request, or None when it is for the API."""
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1").lower().rsplit(":", 1)[0]
                if host.endswith(self.suffix):
                    label = host[: -len(self.suffix)]
                    return label if "." not in label else None
                return None
        return None

    async def handle(self, scope: Scope, receive: Receive, send: Send, label: str) -> None:
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self._proxy(scope, receive, send, label)

    def _authorized(self, scope: Scope, label: str) -> tuple[int, int] | int:
        """(status) on refusal, else (logical port, host port)."""
        parsed = parse_label(label)
        if parsed is None:
            return 404
        port, sandbox_id, expiry, mac = parsed
        token = self.provider.token(sandbox_id)
        host_port = self.provider.host_port(sandbox_id, port)
        if token is None or host_port is None:
            return 404
        if expiry is not None and mac is not None:
            config = self.provider.config
            now = config.clock.now().timestamp()
            ok = verify_label(config.signing_key, sandbox_id, port, expiry, mac, token, now)
        else:
            given = next((v for k, v in scope["headers"] if k == TOKEN_HEADER), b"")
            ok = hmac.compare_digest(given, token.encode())
        return (port, host_port) if ok else 401

    async def _proxy(self, scope: Scope, receive: Receive, send: Send, label: str) -> None:
        decision = self._authorized(scope, label)
        if isinstance(decision, int):
            text = b"Preview not found" if decision == 404 else b"Missing or invalid preview token"
            await _plain(send, decision, text)
            return
        _, host_port = decision
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY:
                await _plain(send, 413, b"Request body too large")
                return
        headers = _forwarded_headers(scope["headers"])
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        url = f"http://127.0.0.1:{host_port}{path.decode('latin-1')}"
        if query:
            url += "?" + query.decode("latin-1")
        try:
            request = self.client.build_request(scope["method"], url, headers=headers, content=body)
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError:
            await _plain(send, 502, b"The preview server is not answering")
            return
        try:
            out_headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in upstream.headers.multi_items()
                if k.encode("latin-1").lower() not in HOP_BY_HOP
                and k.lower() not in ("content-length", "content-encoding", "cache-control")
                # a sandbox may set cookies for its own host only, never for a parent domain
                # (where it could plant or overwrite the user's session on the real app)
                and not (k.lower() == "set-cookie" and DOMAIN_ATTR.search(v))
            ]
            out_headers.append((b"cache-control", b"private, no-store"))
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": out_headers,
                }
            )
            async for chunk in upstream.aiter_bytes():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()


def _forwarded_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Request headers for the sandbox's server: no hop-by-hop headers, no preview token, no
    Authorization, and no session cookies of the Midori app (a cookie scoped to a parent domain
    reaches preview hosts too; the sandbox runs code we do not trust)."""
    out: list[tuple[str, str]] = []
    for k, v in raw:
        if k in HOP_BY_HOP or k == b"authorization":
            continue
        value = v.decode("latin-1")
        if k == b"cookie":
            kept = [
                c for c in value.split(";") if c.strip() and not SESSION_COOKIE.match(c.strip())
            ]
            if not kept:
                continue
            value = ";".join(kept).strip()
        out.append((k.decode("latin-1"), value))
    return out


async def _plain(send: Send, status: int, text: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8")],
        }
    )
    await send({"type": "http.response.body", "body": text})
