"""Preview host labels and links: `{port}-{sandboxId}` (with the preview token in the
`x-daytona-preview-token` header) and the signed `{port}-{sandboxId}-{expiry}-{mac}`.

The signed label carries its credential in the host name itself, so every request for a page and
its assets carries it — top-level or inside a cross-site iframe, where browsers drop third-party
cookies. Host names are case-insensitive, so everything is lowercase base32/base36; the label
stays under 63 characters. The MAC covers the sandbox's own preview token (ours, random per
sandbox), so a sandbox's links die with it. Pure: no I/O, no framework."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime


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
    """The signed label of `sandbox_id`'s `port`, valid until `expiry` (Unix seconds)."""
    return f"{port}-{sandbox_id}-{_b36(expiry)}-{_mac(key, sandbox_id, port, expiry, token)}"


@dataclass(frozen=True, slots=True)
class Label:
    """A parsed preview host label; `expiry` and `mac` are None for the unsigned form."""

    port: int
    sandbox_id: str
    expiry: int | None = None
    mac: str | None = None

    @property
    def signed(self) -> bool:
        return self.expiry is not None and self.mac is not None


def parse_label(label: str) -> Label | None:
    """The label's parts, or None when it is not a preview label at all."""
    parts = label.split("-")
    if len(parts) not in (2, 4) or not parts[0].isdigit() or len(parts[0]) > 5:
        return None
    if not parts[1] or not parts[1].isalnum():
        return None
    port = int(parts[0])
    if len(parts) == 2:
        return Label(port, parts[1])
    try:
        expiry = int(parts[2], 36)
    except ValueError:
        return None
    return Label(port, parts[1], expiry, parts[3])


def verify_label(key: bytes, label: Label, token: str, now: float) -> bool:
    """A signed label that has not expired and whose MAC matches `token` (constant time)."""
    if label.expiry is None or label.mac is None or label.expiry < now:
        return False
    expected = _mac(key, label.sandbox_id, label.port, label.expiry, token)
    return hmac.compare_digest(expected, label.mac)


@dataclass(frozen=True, slots=True)
class PreviewLinks:
    """The service's preview URLs: `{scheme}://{label}.{base_domain}[:{port}]/`."""

    key: bytes = field(repr=False)
    base_domain: str
    scheme: str = "http"
    public_port: int = 80

    def url(self, label: str) -> str:
        default = (self.scheme, self.public_port) in (("http", 80), ("https", 443))
        port = "" if default else f":{self.public_port}"
        return f"{self.scheme}://{label}.{self.base_domain}{port}/"

    def preview_url(self, sandbox_id: str, port: int) -> str:
        """The link for programs (the token goes in the `x-daytona-preview-token` header)."""
        return self.url(f"{port}-{sandbox_id}")

    def open_url(self, sandbox_id: str, port: int, token: str, expires_at: datetime) -> str:
        """The link for browsers: the credential is in the host name, valid until `expires_at`."""
        expiry = int(expires_at.timestamp())
        return self.url(sign_label(self.key, sandbox_id, port, expiry, token))
