"""Signed preview host labels: `{port}-{sandboxId}-{expiry}-{mac}`.

The credential sits in the host name itself, so every request for a page and its assets carries
it — top-level or inside a cross-site iframe, where browsers drop third-party cookies. Host names
are case-insensitive, so everything is lowercase base32/base36; the label stays under 63 chars.
The MAC covers the sandbox's own preview token, so a sandbox's links die with it."""

from __future__ import annotations

import base64
import hashlib
import hmac


def _b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _mac(key: bytes, sandbox_id: str, port: int, expiry: int, token: str) -> str:
    msg = f"{sandbox_id}:{port}:{expiry}:{token}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()[:15]
    return base64.b32encode(digest).decode().lower()


def sign_label(key: bytes, sandbox_id: str, port: int, expiry: int, token: str) -> str:
    return f"{port}-{sandbox_id}-{_b36(expiry)}-{_mac(key, sandbox_id, port, expiry, token)}"


def parse_label(label: str) -> tuple[int, str, int | None, str | None] | None:
    """`(port, sandbox_id, expiry, mac)` of a preview host label; expiry/mac None when unsigned."""
    parts = label.split("-")
    if len(parts) not in (2, 4) or not parts[0].isdigit() or len(parts[0]) > 5:
        return None
    port = int(parts[0])
    if len(parts) == 2:
        return port, parts[1], None, None
    try:
        expiry = int(parts[2], 36)
    except ValueError:
        return None
    return port, parts[1], expiry, parts[3]


def verify_label(
    key: bytes, sandbox_id: str, port: int, expiry: int, mac: str, token: str, now: float
) -> bool:
    if expiry < now:
        return False
    return hmac.compare_digest(_mac(key, sandbox_id, port, expiry, token), mac)
