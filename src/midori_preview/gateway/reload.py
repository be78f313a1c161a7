"""The reload script of live updates: the gateway adds one tag to the HTML pages of a running
preview (`PREVIEW_RELOAD_SCRIPT`), loading `/__midori/reload.js` with the version the page was
served at. The script listens on the preview host's own event channel (`/__midori/events`, which
no one counts as a viewer and which keeps nothing alive) and reloads the page, keeping its scroll
position, when a newer version goes live. Pages of a dev server with its own hot reload (Vite's
client) are left as they are."""

from __future__ import annotations

from collections.abc import Iterable

RELOAD_JS = "/__midori/reload.js"
MAX_HTML = 4 * 1024 * 1024  # a larger page is passed on as it is (not buffered)
HOT_RELOADERS = (b"/@vite/client", b"/@react-refresh", b"webpack-hot-middleware")


def tag(version: int) -> bytes:
    return (
        f'<script src="{RELOAD_JS}" data-midori-version="{int(version)}" async></script>'
    ).encode()


def injectable(method: str, status: int, headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """An HTML page the script can be added to: a whole, uncompressed 200 answer to a GET."""
    if method != "GET" or status != 200:
        return False
    found = dict(headers)
    media = found.get(b"content-type", b"").split(b";")[0].strip().lower()
    encoding = found.get(b"content-encoding", b"identity").strip().lower()
    return media == b"text/html" and encoding == b"identity"


def add_script(html: bytes, script: bytes) -> bytes | None:
    """`html` with `script` before its last `</body>` (at its end without one); None for a page
    that reloads itself already (a dev server's client)."""
    if any(marker in html for marker in HOT_RELOADERS):
        return None
    at = html.lower().rfind(b"</body>")
    if at < 0:
        at = len(html)
    return html[:at] + script + html[at:]


def with_length(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k != b"content-length"]
    return [*kept, (b"content-length", str(length).encode())]
