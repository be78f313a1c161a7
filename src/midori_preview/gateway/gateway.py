"""The preview gateway: requests for `{port}-{label}.{PREVIEW_BASE_DOMAIN}` (HTTP and WebSocket)
are served here, whatever the provider.

host label → the sandbox's row (one read; any replica) → its credential (the token header, or a
signed label) → by state: running → its server (`proxy`, `websocket`); building → the building
page; stopping, stopped or failed → the stopped page. `/__midori/…` is the gateway's own
(script, style, the event channel) and never reaches a sandbox. Browsers (`text/html` in
`Accept`) get pages; programs get the status codes they always got: 404 unknown (or no longer
running), 401 bad credential, 502 server not answering, 413 body too large, 503 still building.
"""

from __future__ import annotations

import hmac

from starlette.types import Receive, Scope, Send

from midori_preview.clock import Clock
from midori_preview.gateway import pages, reload
from midori_preview.gateway.channel import events_response, since_version
from midori_preview.gateway.labels import Label, PreviewLinks, parse_label, verify_label
from midori_preview.gateway.proxy import (
    TOKEN_HEADER,
    BodyTooLarge,
    HttpProxy,
    UpstreamUnavailable,
    header,
)
from midori_preview.gateway.websocket import deny, pass_websocket
from midori_preview.logging import get_logger
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import BUILDING, SandboxStatus
from midori_preview.previews.views import HostView
from midori_preview.providers.base import ProviderError

log = get_logger(__name__)


def wants_html(scope: Scope) -> bool:
    """A browser asking for a page (not a script, an image or a program's call)."""
    accept = header(scope, b"accept") or b""
    return scope["type"] == "http" and b"text/html" in accept


class PreviewGateway:
    """Serves every preview host; built once per app (`bootstrap`), mounted by `middleware`."""

    def __init__(
        self,
        *,
        previews: PreviewService,
        links: PreviewLinks,
        clock: Clock,
        reload_script: bool = True,
    ) -> None:
        self.previews = previews
        self.reload_script = reload_script  # PREVIEW_RELOAD_SCRIPT (live updates)
        self.links = links
        self.clock = clock
        self.suffix = "." + links.base_domain.lower()
        self.http = HttpProxy()

    def match(self, scope: Scope) -> str | None:
        """The preview host label of this request, or None when it is for the API."""
        host = header(scope, b"host")
        if host is None:
            return None
        name = host.decode("latin-1").lower().rsplit(":", 1)[0]
        if not name.endswith(self.suffix):
            return None
        label = name[: -len(self.suffix)]
        return label if label and "." not in label else None

    async def handle(self, scope: Scope, receive: Receive, send: Send, label: str) -> None:
        """Answer one request (or WebSocket) for the preview host `label`."""
        path = scope.get("path", "/")
        if scope["type"] == "http" and (asset := pages.asset(path)) is not None:
            await asset(scope, receive, send)  # the same for every preview: no credential
            return
        browser = wants_html(scope)
        parsed = parse_label(label)
        view = await self.previews.host_view(parsed.sandbox_id) if parsed else None
        refusal = self._refusal(scope, parsed, view)
        if refusal is not None or view is None:
            await self._refuse(scope, receive, send, refusal or 404, browser)
            return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send, view)
        elif path == pages.EVENTS_PATH:
            last = header(scope, b"last-event-id")
            response = await events_response(
                self.previews,
                view,
                last.decode("latin-1") if last else None,
                since_version=since_version(scope),
            )
            await response(scope, receive, send)
        elif path.startswith(pages.RESERVED):
            await pages.notice(404, browser=browser)(scope, receive, send)
        else:
            await self._http(scope, receive, send, view, browser)

    def _refusal(self, scope: Scope, label: Label | None, view: HostView | None) -> int | None:
        """404 for no such preview, 401 for a missing or wrong credential, None when allowed."""
        if label is None or view is None or view.token is None:
            return 404
        if label.signed:
            now = self.clock.now().timestamp()
            return None if verify_label(self.links.key, label, view.token, now) else 401
        given = header(scope, TOKEN_HEADER.encode()) or b""
        return None if hmac.compare_digest(given, view.token.encode()) else 401

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, browser: bool
    ) -> None:
        if scope["type"] == "websocket":
            await deny(send)
        else:
            await pages.notice(status, browser=browser)(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, view: HostView) -> None:
        if view.status != SandboxStatus.RUNNING:
            await deny(send)
            return
        try:
            upstream = await self.previews.upstream(view)
        except ProviderError:
            await deny(send, 1011)
            return
        await pass_websocket(scope, receive, send, upstream)

    async def _http(
        self, scope: Scope, receive: Receive, send: Send, view: HostView, browser: bool
    ) -> None:
        if view.status == SandboxStatus.RUNNING:
            try:
                upstream = await self.previews.upstream(view)
                inject = reload.tag(view.version) if browser and self.reload_script else None
                await self.http.forward(
                    scope, receive, send, upstream, browser=browser, inject=inject
                )
                return
            except BodyTooLarge:
                await pages.notice(413, browser=browser)(scope, receive, send)
                return
            except (UpstreamUnavailable, ProviderError):
                # Stopped meanwhile? Then say so; else the server itself is not answering.
                fresh = await self.previews.host_view(view.sandbox_id)
                if fresh is None or fresh.status == SandboxStatus.RUNNING:
                    log.info("gateway.upstream_unavailable", sandbox_id=view.sandbox_id)
                    await pages.notice(502, browser=browser)(scope, receive, send)
                    return
                view = fresh
        if view.status in BUILDING:
            page = pages.building_page(view) if browser else pages.notice(503, browser=False)
        else:
            page = pages.stopped_page(view) if browser else pages.notice(404, browser=False)
        await page(scope, receive, send)

    async def aclose(self) -> None:
        await self.http.aclose()
