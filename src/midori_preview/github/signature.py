"""HMAC checks: GitHub's `X-Hub-Signature-256` over the raw webhook body, and the signed review
links this service hands out in PR comments. Both compare in constant time."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

PREFIX = "sha256="
_LINK_CONTEXT = b"midori-preview/review-link\x00"
_LINK_MAC_BYTES = 16


def sign_body(secret: bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body`."""
    return PREFIX + hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_ok(secret: bytes, body: bytes, header: str | None) -> bool:
    """True only for a `sha256=` HMAC of exactly these bytes (no sha1=, no re-serialized body)."""
    if not header or not header.startswith(PREFIX):
        return False
    expected = sign_body(secret, body).encode()
    return hmac.compare_digest(expected, header.strip().encode("utf-8", "replace"))


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A key for one purpose derived from a shared secret (same on every replica)."""
    return hmac.new(secret, b"midori-preview:" + purpose.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LinkSigner:
    """Review links: `<base64url(repo \\n target)>.<base64url(mac)>`. They name what to show,
    never grant anything by themselves: the visit checks the PR is still open."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.key, _LINK_CONTEXT + payload, hashlib.sha256).digest()[
            :_LINK_MAC_BYTES
        ]

    def sign(self, repo: str, target: str) -> str:
        payload = f"{repo}\n{target}".encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def verify(self, token: str) -> tuple[str, str] | None:
        """(repo, target) of a link this service signed, else None."""
        if len(token) > 1024 or token.count(".") != 1:
            return None
        encoded, mac = token.split(".")
        try:
            payload, given = _unb64(encoded), _unb64(mac)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(self._mac(payload), given):
            return None
        repo, sep, target = payload.decode("utf-8", "replace").partition("\n")
        return (repo, target) if sep else None
