"""The browser side: the demo page (`/test`), the admin page (`/admin`) and `/static` (the JS
client, the pages' scripts and styles, the example project). The pages are static files; the
only thing filled in per request is how this service authenticates callers. The admin page is
served to anyone: every call it makes for data needs the admin role."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from midori_preview.deps import SettingsDep
from midori_preview.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"

# No inline script or style anywhere; the preview itself lives on other hosts (any provider's),
# so frames may come from any http(s) origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-src http: https:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)


class _StaticFiles(StaticFiles):
    """No build step means no hashed file names: browsers revalidate every time (ETag)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"cache-control", b"no-cache"),
                    (b"x-content-type-options", b"nosniff"),
                ]
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


@cache
def _page(name: str) -> str:
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def _render(settings: Settings, name: str) -> HTMLResponse:
    cookies = bool(settings.nextauth_secret or settings.auth_secret)
    body = (
        _page(name)
        .replace("{{AUTH_MODE}}", html.escape(settings.effective_auth_mode))
        .replace("{{COOKIE_AUTH}}", "true" if cookies else "false")
    )
    return HTMLResponse(body, headers=PAGE_HEADERS)


@router.api_route("/test", methods=["GET", "HEAD"])
async def demo_page(settings: SettingsDep) -> HTMLResponse:
    """Start a preview of an example project and watch it build, run and stop."""
    return _render(settings, "demo.html")


@router.api_route("/admin", methods=["GET", "HEAD"])
async def admin_page(settings: SettingsDep) -> HTMLResponse:
    """Sandboxes, the reaper and usage charts (its data calls need the admin role)."""
    return _render(settings, "admin.html")


def mount_web(app: FastAPI) -> None:
    """Serve the pages and `/static` from `app`."""
    app.include_router(router)
    app.mount("/static", _StaticFiles(directory=STATIC_DIR), name="static")
