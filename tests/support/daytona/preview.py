"""Preview URLs: the API that hands them out (plain with a token, signed with an expiry) and the
proxy that serves them from the sandbox's port, the way Daytona's own proxy does
(apps/proxy/pkg/proxy in Daytona's source, v0.190.0):

- a browser (its User-Agent, classified as mssola/useragent does: headless Chrome is not one)
  gets the warning page first, unless it sends `X-Daytona-Skip-Preview-Warning: true`, asks for
  a WebSocket, or accepted the warning before (a cookie);
- then the credential: the `x-daytona-preview-token` header, a signed token in the URL, or a
  public sandbox; anything else is a **307** redirect to the login page (unknown sandboxes,
  deleted ones and expired signed URLs included);
- a sandbox that is not started answers 400 (its runner finds no container address); nothing
  listening on the port answers 502 with an empty body;
- every proxied request counts as the sandbox's activity (at most one update per 45 s, and
  every 50 s while a request or WebSocket stays open) unless it sends
  `X-Daytona-Skip-Last-Activity-Update: true`;
- WebSockets pass through.

Path scheme: `http://127.0.0.1:PORT/preview/{sandboxId}/{port}/...` and
`http://127.0.0.1:PORT/signed/{token}/...`. Host scheme: `http://{port}-{sandboxId|token}.
preview.localhost:PORT/`, which browsers resolve to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
import time
from collections import Counter
from datetime import UTC, datetime
from urllib.parse import quote

import aiohttp
from aiohttp import web

from tests.support.daytona import routes
from tests.support.daytona.state import ApiError, Handler, Sandbox, Signed, State, port_of

PREVIEW_HOST = re.compile(r"^(\d+)-([A-Za-z0-9-]+)\.preview\.localhost(?::\d+)?$")
TOKEN_HEADER = "x-daytona-preview-token"
SKIP_WARNING = "x-daytona-skip-preview-warning"
SKIP_ACTIVITY = "x-daytona-skip-last-activity-update"
ACCEPTED_COOKIE = "daytona-preview-page-accepted"
ACCEPT_PATH = "/accept-daytona-preview-warning"
LOGIN_PATH = "/oidc/authorize"
ACTIVITY_CACHE_SECONDS = 45.0  # Daytona caches an activity update this long…
ACTIVITY_POLL_SECONDS = 50.0  # …and refreshes it this often while a request stays open
BROWSERS = {"chrome", "firefox", "safari", "edge", "brave", "vivaldi", "samsung", "opera"}
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
        TOKEN_HEADER,  # Daytona deletes the credential it checked (other headers go along)
    }
)
_WS_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept"}
)  # fmt: skip
_SECTION = re.compile(r"([^\s/(]+)(?:/(\S*))?\s*(?:\(([^)]*)\))?\s*")


def browser_name(user_agent: str) -> str:
    """The browser a User-Agent names, as mssola/useragent v1.0.0 (Daytona's choice) says,
    for the user agents that matter here ("" when it names none)."""
    if user_agent.startswith("Opera"):
        return "opera"
    sections = [(m[1], m[2] or "") for m in _SECTION.finditer(user_agent) if m[1]]
    if len(sections) < 3:
        return ""
    engine = sections[1][0]
    if engine == "Gecko":
        return sections[2][0].lower()
    if engine != "AppleWebKit":
        return ""
    last, n = sections[-1][0], len(sections)
    special = {"Edge": "edge", "Edg": "edge", "OPR": "opera", "Mobile": "mobile app"}
    if last in special:
        return special[last]
    if sections[n - 3][0] in ("YaBrowser", "coc_coc_browser"):
        return "other"
    if sections[n - 2][0] in ("Electron", "DuckDuckGo", "PhantomJS"):
        return sections[n - 2][0].lower()
    index = 3 if sections[2][1] == "" and n > 3 else 2
    named = {
        "Chrome": "chrome",
        "CriOS": "chrome",
        "HeadlessChrome": "headless chrome",
        "Chromium": "chromium",
        "GSA": "google app",
        "FxiOS": "firefox",
    }
    return named.get(sections[index][0], "safari")


def listed_in_connection(value: str) -> frozenset[str]:
    """Headers a `Connection` header names: hop-by-hop too (Go's ReverseProxy drops them)."""
    return frozenset(name.strip().lower() for name in value.split(",") if name.strip())


def is_websocket(request: web.Request) -> bool:
    return (
        request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def warning_page(request: web.Request) -> web.Response:
    """Daytona's browser warning (its text, trimmed): continuing sets a cookie for a day."""
    here = f"http://{request.host}{request.path_qs}"
    action = f"{ACCEPT_PATH}?redirect={quote(here, safe='')}"
    body = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>Daytona Preview - Warning</title></head><body>"
        '<h1 class="warning-title">Preview URL Warning</h1>'
        f"<p>You are about to visit <strong>{html.escape(here)}</strong></p>"
        "<p>This website is served through daytona.io.</p>"
        f'<form action="{action}" method="POST"><button type="submit">'
        "I Understand, Continue</button></form></body></html>"
    )
    headers = {
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
        "form-action 'self'",
        "X-Content-Type-Options": "nosniff",
    }
    return web.Response(text=body, content_type="text/html", headers=headers)


class PreviewApi:
    def __init__(self, state: State) -> None:
        self.state = state
        self.activity: Counter[str] = Counter()  # activity updates the proxy made, per sandbox
        self._activity_until: dict[str, float] = {}

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
            (LOGIN_PATH, self.login_page),
            (ACCEPT_PATH, self.accept_at_root),
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

    async def accept_at_root(self, request: web.Request) -> web.StreamResponse:
        """The warning page's form, on the path scheme (its action is host-relative)."""
        if request.method != "POST":
            raise ApiError(404, "not found")
        return self.accept_warning(request)

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="<h1>Daytona login</h1>", content_type="text/html")

    # --- the proxy -------------------------------------------------------------------------------

    async def preview(self, request: web.Request) -> web.StreamResponse:
        port, tail = port_of(request), request.match_info.get("tail") or "/"
        return await self.serve(request, request.match_info["sandboxId"], port, tail)

    async def signed_preview(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail") or "/"
        return await self.serve(request, request.match_info["token"], None, tail)

    async def host_preview(self, request: web.Request, port: int, label: str) -> web.StreamResponse:
        return await self.serve(request, label, port, request.path)

    async def serve(
        self, request: web.Request, key: str, port: int | None, path: str
    ) -> web.StreamResponse:
        """Daytona's order: the warning page, the credential, the runner, then the server."""
        if request.method == "POST" and path == ACCEPT_PATH:
            return self.accept_warning(request)
        if self.shows_warning(request):
            return warning_page(request)
        found = self.authenticate(request, key, port)
        if found is None:
            return self.login_redirect(request)
        sandbox, port = found
        self.state.advance(sandbox)
        if sandbox.state != "started":
            raise ApiError(  # the proxy's runner lookup (get_sandbox_target.go)
                400,
                "failed to get runner info: no IP address found. Is the Sandbox started?",
                code="BAD_REQUEST",
            )
        counts = request.headers.get(SKIP_ACTIVITY, "").lower() != "true"
        poll = asyncio.create_task(self.keep_active(sandbox)) if counts else None
        try:
            target = f"http://127.0.0.1:{port}{path}"
            if request.query_string:
                target += f"?{request.query_string}"
            if is_websocket(request):
                return await self.pass_websocket(request, "ws" + target[4:])
            return await self.forward(request, target)
        finally:
            if poll is not None:
                poll.cancel()

    def shows_warning(self, request: web.Request) -> bool:
        return (
            request.headers.get(SKIP_WARNING, "").lower() != "true"
            and browser_name(request.headers.get("User-Agent", "")) in BROWSERS
            and not is_websocket(request)
            and request.cookies.get(ACCEPTED_COOKIE) != "true"
        )

    def accept_warning(self, request: web.Request) -> web.StreamResponse:
        target = request.query.get("redirect", "/")
        if not (target.startswith(f"http://{request.host}/") or target.startswith("/")):
            target = "/"
        response = web.HTTPFound(target)
        response.set_cookie(ACCEPTED_COOKIE, "true", max_age=86400, path="/", httponly=True)
        return response

    def login_redirect(self, request: web.Request) -> web.StreamResponse:
        back = quote(f"http://{request.host}{request.path_qs}", safe="")
        login = f"{self.state.base_url}{LOGIN_PATH}?returnTo={back}"
        return web.Response(status=307, headers={"Location": login})

    def authenticate(
        self, request: web.Request, key: str, port: int | None
    ) -> tuple[Sandbox, int] | None:
        """The sandbox and port a credential opens, or None (then: the login redirect)."""
        with self.state.lock:
            sandbox = self.state.sandboxes.get(key)
            if sandbox is not None and port is not None:
                given = request.headers.get(TOKEN_HEADER)
                if sandbox.public or (given is not None and given == sandbox.preview_token):
                    return sandbox, port
            for each in self.state.sandboxes.values():
                signed = each.signed.get(key)
                if signed is None:
                    continue
                if signed.expires_at <= time.time():
                    del each.signed[key]
                    return None
                if port is not None and signed.port != port:
                    return None
                return each, signed.port
        return None

    async def keep_active(self, sandbox: Sandbox) -> None:
        """The proxy's activity updates for one request: now, then every 50 s while it lasts."""
        while True:
            now = time.monotonic()
            with self.state.lock:
                if self._activity_until.get(sandbox.id, 0.0) <= now:
                    self._activity_until[sandbox.id] = now + ACTIVITY_CACHE_SECONDS
                    self.activity[sandbox.id] += 1
                    sandbox.updated_at = datetime.now(UTC)
            await asyncio.sleep(ACTIVITY_POLL_SECONDS)

    def upstream_headers(self, request: web.Request, drop: frozenset[str]) -> dict[str, str]:
        drop = drop | listed_in_connection(request.headers.get("Connection", ""))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
        headers["X-Forwarded-Host"] = request.host  # as Daytona's proxy adds it
        return headers

    async def forward(self, request: web.Request, target: str) -> web.StreamResponse:
        """Forward to 127.0.0.1:`port`, streaming both ways; 502 when nothing answers."""
        assert self.state.client is not None
        response: web.StreamResponse | None = None
        try:
            async with self.state.client.request(
                request.method,
                target,
                headers=self.upstream_headers(request, _HOP_BY_HOP),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                drop = _HOP_BY_HOP | listed_in_connection(upstream.headers.get("Connection", ""))
                for key, value in upstream.headers.items():
                    if key.lower() not in drop or key.lower() == "content-length":
                        response.headers.add(key, value)
                await response.prepare(request)
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError, TimeoutError):
            if response is not None:
                raise
            return web.Response(status=502)  # Go's ReverseProxy: AbortWithStatus, no body

    async def pass_websocket(self, request: web.Request, target: str) -> web.StreamResponse:
        """Open the same WebSocket to the server, accept the client with the server's choice
        of subprotocol, relay until either side closes."""
        assert self.state.client is not None
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        try:
            upstream = await self.state.client.ws_connect(
                target,
                protocols=[p for p in offered if p],
                headers=self.upstream_headers(request, _HOP_BY_HOP | _WS_HANDSHAKE),
            )
        except (aiohttp.ClientError, OSError, TimeoutError):
            return web.Response(status=502)
        client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol else ())
        await client.prepare(request)

        async def relay(
            source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
            sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
        ) -> None:
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
            await sink.close(code=source.close_code or 1000)

        tasks = [
            asyncio.create_task(relay(client, upstream)),
            asyncio.create_task(relay(upstream, client)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
            await upstream.close()
        return client
