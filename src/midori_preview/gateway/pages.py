"""The gateway's own answers on a preview host: small UTF-8 pages for browsers (building, stopped,
and notices for an unknown preview, a bad link, a server that does not answer), plain text for
programs, and the pages' script and style under `/__midori/`. No inline script (a strict CSP),
no external resource, nothing that keeps a sandbox alive."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse, PlainTextResponse, Response

from midori_preview.previews.states import STEPS, SandboxStatus
from midori_preview.previews.views import HostView

RESERVED = "/__midori/"  # never forwarded to a sandbox
EVENTS_PATH = RESERVED + "events"
STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    RESERVED + "page.js": ("page.js", "text/javascript; charset=utf-8"),
    RESERVED + "page.css": ("page.css", "text/css; charset=utf-8"),
    RESERVED + "reload.js": ("reload.js", "text/javascript; charset=utf-8"),
}
# The pages embed anywhere (the Midori project page's iframe): no frame-ancestors.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
REASONS = {
    "user": "This preview was stopped.",
    "replaced": "This preview was replaced by a newer one.",
    "idle": "This preview stopped because nobody was watching it.",
    "expired": "This preview reached its maximum lifetime.",
    "quota": "Today's preview time is used up, so this preview was stopped.",
    "admin": "An administrator stopped this preview.",
    "lost": "This preview's sandbox is gone.",
    "orphan": "This preview's sandbox is gone.",
    "pr_closed": "The pull request was closed, so its preview was stopped.",
    "error:lease_lost": "The build was interrupted (the server building it went away).",
    "error:shutdown": "The build was interrupted (the service restarted).",
}


@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def asset(path: str) -> Response | None:
    """The pages' script or style for `path`, or None when `path` names neither."""
    found = ASSETS.get(path)
    if found is None:
        return None
    name, media_type = found
    headers = {"cache-control": "max-age=300", "x-content-type-options": "nosniff"}
    return Response(_asset(name), media_type=media_type, headers=headers)


def stopped_text(reason: str | None) -> str:
    """Why a preview is not running any more, in one sentence."""
    if reason in REASONS:
        return REASONS[reason]
    if reason and reason.startswith("error:"):
        return f"The build failed at “{reason[6:]}”."
    return "This preview is no longer running."


def _page(
    kind: str, title: str, status: int, body: str, *, view: HostView | None = None
) -> Response:
    data = f' data-kind="{kind}"'
    if view is not None:
        data += f' data-sandbox-id="{html.escape(view.sandbox_id)}" data-status="{view.status}"'
    doc = (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n"
        f'<link rel="stylesheet" href="{RESERVED}page.css">\n'
        f'<script src="{RESERVED}page.js" defer></script>\n'
        f"</head>\n<body{data}>\n<main>\n<h1>{html.escape(title)}</h1>\n{body}</main>\n"
        "</body>\n</html>\n"
    )
    headers = dict(PAGE_HEADERS)
    if status == 503:
        headers["retry-after"] = "2"
    return HTMLResponse(doc, status_code=status, headers=headers)


def _log(lines: tuple[str, ...], keep: int) -> str:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines[-keep:])
    return f'<ul id="log" aria-live="polite">{items}</ul>\n'


def building_page(view: HostView) -> Response:
    """The build, live: its steps and log lines; the page turns into the site by itself. A page
    to show, so a 200 (programs get the 503)."""
    at = STEPS.index(view.status) if view.status in STEPS else 0
    steps = "".join(
        f'<li data-step="{step}" data-state="{state}">{step}</li>'
        for i, step in enumerate(STEPS)
        for state in ("done" if i < at else "current" if i == at else "pending",)
    )
    body = (
        '<p class="lead">This preview is being built. The page shows the site by itself when '
        "it is ready.</p>\n"
        f'<ol id="steps" aria-label="Build steps">{steps}</ol>\n' + _log(view.logs_tail, 50)
    )
    return _page(SandboxStatus.BUILDING, "Building the preview…", 200, body, view=view)


def stopped_page(view: HostView) -> Response:
    """Why the preview is not running, and (inside an embedding page) a way to start it again.
    A page to show, so a 200 (programs get the 404)."""
    if view.status == SandboxStatus.STOPPING:
        reason = "This preview is stopping."
    else:
        reason = stopped_text(view.reason)
    body = f'<p class="lead">{html.escape(reason)}</p>\n'
    if view.error is not None:
        error = view.error
        code = f" (exit code {error.exit_code})" if error.exit_code is not None else ""
        detail = f"Step “{error.step}”: {error.message or 'failed'}{code}"
        body += f'<p class="error">{html.escape(detail)}</p>\n' + _log(view.logs_tail, 15)
    body += (
        '<button id="restart" type="button" hidden>Start it again</button>\n'
        '<p id="restart-note" class="muted">Start it again from the page you opened it from.</p>\n'
    )
    return _page(SandboxStatus.STOPPED, "This preview is not running", 200, body, view=view)


NOTICES = {
    404: ("No such preview", "This preview does not exist (or no longer does)."),
    401: (
        "This link is not valid",
        "The link has expired or is not valid. Open the preview again from where you found it.",
    ),
    413: ("Too large", "The request is larger than a preview accepts."),
    502: (
        "The preview is not answering",
        "The preview's server did not answer. It may be restarting; this page tries again.",
    ),
}
PLAIN = {
    404: "Preview not found",
    401: "Missing or invalid preview token",
    413: "Request body too large",
    502: "The preview server is not answering",
    503: "The preview is still being built",
}


def notice(status: int, *, browser: bool) -> Response:
    """A page for browsers, the same few words as plain text for programs."""
    if not browser:
        headers = {"cache-control": "no-store"}
        if status == 503:
            headers["retry-after"] = "2"
        return PlainTextResponse(PLAIN[status], status_code=status, headers=headers)
    title, text = NOTICES[status]
    page = _page("notice", title, status, f'<p class="lead">{html.escape(text)}</p>\n')
    if status == 502:  # the browser tries again by itself (no script needed)
        page.headers["refresh"] = "3"
    return page
