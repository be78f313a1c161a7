"""Preview URLs: the API that hands them out (plain with a token, signed with an expiry) and the
proxy that serves them from the sandbox's port.

Path scheme: `http://127.0.0.1:PORT/preview/{sandboxId}/{port}/...` (header
`x-daytona-preview-token` required) and `http://127.0.0.1:PORT/signed/{token}/...`. Host scheme:
`http://{port}-{sandboxId|token}.preview.localhost:PORT/`, which browsers resolve to 127.0.0.1 and
which keeps root-relative asset paths working.
"""

from __future__ import annotations

import re
import secrets
import time

import aiohttp
from aiohttp import web

from tests.support.daytona import routes
from tests.support.daytona.state import ApiError, Handler, Sandbox, Signed, State, port_of

PREVIEW_HOST = re.compile(r"^(\d+)-([A-Za-z0-9-]+)\.preview\.localhost(?::\d+)?$")
_HOP_BY_HOP = frozenset(
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
        "content-length",
        "x-daytona-preview-token",
        "x-daytona-skip-preview-warning",
    }
)


class PreviewApi:
    def __init__(self, state: State) -> None:
        self.state = state

    def handlers(self) -> dict[str, Handler]:
        return {
            routes.PREVIEW_URL: self.preview_url,
            routes.SIGNED_PREVIEW_URL: self.signed_preview_url,
            routes.EXPIRE_SIGNED_PREVIEW_URL: self.expire_signed,
        }

    def proxy_routes(self) -> list[tuple[str, Handler]]:
        """(aiohttp path, handler) of the path-scheme preview proxy, for every method."""
        return [
            ("/preview/{sandboxId}/{port:\\d+}{tail:(/.*)?}", self.preview),
            ("/signed/{token}{tail:(/.*)?}", self.signed_preview),
        ]

    def host_match(self, host: str) -> re.Match[str] | None:
        """With the host scheme, whether `host` names a preview (port, sandbox id or token)."""
        return PREVIEW_HOST.match(host) if self.state.preview_scheme == "host" else None

    # --- the API ---------------------------------------------------------------------------------

    async def preview_url(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self.state.find(request), port_of(request)
        if self.state.preview_scheme == "host":
            url = f"http://{port}-{sandbox.id}.preview.localhost:{self.state.port}/"
        else:
            url = f"{self.state.base_url}/preview/{sandbox.id}/{port}/"
        return web.json_response(
            {"sandboxId": sandbox.id, "url": url, "token": sandbox.preview_token}
        )

    async def signed_preview_url(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self.state.find(request), port_of(request)
        try:
            expires_in = int(request.query.get("expiresInSeconds", "60"))
        except ValueError:
            raise ApiError(400, "expiresInSeconds must be an integer") from None
        if not 1 <= expires_in <= 24 * 3600:
            raise ApiError(400, "expiresInSeconds out of range")
        token = secrets.token_hex(16)
        with self.state.lock:
            sandbox.signed[token] = Signed(port, time.time() + expires_in)
        if self.state.preview_scheme == "host":
            url = f"http://{port}-{token}.preview.localhost:{self.state.port}/"
        else:
            url = f"{self.state.base_url}/signed/{token}/"
        body = {"sandboxId": sandbox.id, "port": port, "token": token, "url": url}
        return web.json_response(body)

    async def expire_signed(self, request: web.Request) -> web.StreamResponse:
        sandbox = self.state.find(request)
        with self.state.lock:
            sandbox.signed.pop(request.match_info["token"], None)
        return web.Response(status=200)

    # --- the proxy -------------------------------------------------------------------------------

    async def preview(self, request: web.Request) -> web.StreamResponse:
        sandbox, port = self.state.find(request), port_of(request)
        tail = request.match_info.get("tail") or "/"
        return await self.serve(request, sandbox, port, tail, signed=False)

    async def signed_preview(self, request: web.Request) -> web.StreamResponse:
        token = request.match_info["token"]
        sandbox, signed = self.find_signed(token)
        tail = request.match_info.get("tail") or "/"
        return await self.serve(request, sandbox, signed.port, tail, signed=True)

    async def host_preview(self, request: web.Request, port: int, label: str) -> web.StreamResponse:
        with self.state.lock:
            sandbox = self.state.sandboxes.get(label)
        if sandbox is not None:
            return await self.serve(request, sandbox, port, request.path, signed=False)
        sandbox, signed = self.find_signed(label)
        if signed.port != port:
            raise ApiError(404, "no such preview")
        return await self.serve(request, sandbox, port, request.path, signed=True)

    def find_signed(self, token: str) -> tuple[Sandbox, Signed]:
        with self.state.lock:
            for sandbox in self.state.sandboxes.values():
                signed = sandbox.signed.get(token)
                if signed is None:
                    continue
                if signed.expires_at <= time.time():
                    del sandbox.signed[token]
                    raise ApiError(410, "signed preview URL expired")
                return sandbox, signed
        raise ApiError(404, "no such preview")

    async def serve(
        self, request: web.Request, sandbox: Sandbox, port: int, path: str, *, signed: bool
    ) -> web.StreamResponse:
        """Forward the request to 127.0.0.1:`port` and stream the answer back."""
        self.state.advance(sandbox)
        if sandbox.state != "started":
            raise ApiError(410, "sandbox is not running")
        token = request.headers.get("x-daytona-preview-token")
        if not signed and not sandbox.public and token != sandbox.preview_token:
            raise ApiError(401, "preview token missing or invalid")
        target = f"http://127.0.0.1:{port}{path}"
        if request.query_string:
            target += f"?{request.query_string}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        body = await request.read()
        assert self.state.client is not None
        response: web.StreamResponse | None = None
        try:
            async with self.state.client.request(
                request.method, target, headers=headers, data=body or None, allow_redirects=False
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP or key.lower() == "content-length":
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, TimeoutError):
            if response is not None:
                raise
            raise ApiError(502, f"no server answered on port {port}") from None
