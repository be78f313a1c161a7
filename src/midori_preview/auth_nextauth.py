"""Browser sessions: the NextAuth (v4) and Auth.js (v5) session cookie, read directly.

Both libraries keep their JWT session in an encrypted JWE (`alg: dir`) whose key is derived
from the app's secret with HKDF-SHA256:

- v4 (`next-auth@4`), cookie `next-auth.session-token`: enc A256GCM, 32-byte key,
  HKDF salt "" and info "NextAuth.js Generated Encryption Key".
- v5 (`@auth/core`), cookie `authjs.session-token`: enc A256CBC-HS512, 64-byte key,
  HKDF salt = the cookie name, info "Auth.js Generated Encryption Key (<salt>)".

(`__Secure-` prefixed names on https; v5 also accepts A256GCM with a 32-byte key, as its own
decoder does.) A cookie larger than ~4 kB is split by both libraries into `<name>.0`, `<name>.1`,
…; the chunks are joined in order. Each secret setting is a comma-separated list: the first is
the current secret, the others are still accepted (rotation).

Who the caller is: `sub` (NextAuth's user id), else an `id` claim, else `email`; the role is
`admin` when the `role` claim says so (put it there in the `jwt` callback), else `user`.

A cookie rides along with every request a browser makes, including ones another site makes it
send: a state-changing request authenticated by cookie must come from an allowed origin
(ALLOWED_ORIGINS, PUBLIC_URL or the service's own origin), else 403 (CSRF).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import Request
from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from pydantic import SecretStr

from midori_preview.auth import Principal
from midori_preview.errors import Forbidden, Unauthorized
from midori_preview.logging import get_logger
from midori_preview.settings import Settings

log = get_logger(__name__)

V4_COOKIES = ("__Secure-next-auth.session-token", "next-auth.session-token")
V5_COOKIES = ("__Secure-authjs.session-token", "authjs.session-token")
V4_INFO = b"NextAuth.js Generated Encryption Key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LEEWAY_SECONDS = 15  # the libraries' own clock tolerance
MAX_CHUNKS = 16
MAX_TOKEN_CHARS = 64 * 1024


def secrets_of(value: SecretStr | None) -> list[str]:
    """The secrets in a comma-separated secret setting, current one first."""
    if value is None:
        return []
    return [s.strip() for s in value.get_secret_value().split(",") if s.strip()]


def _hkdf(secret: str, salt: str, info: bytes, length: int) -> bytes:
    kdf = HKDF(algorithm=SHA256(), length=length, salt=salt.encode(), info=info)
    return kdf.derive(secret.encode())


@dataclass(frozen=True, slots=True)
class _Key:
    enc: str
    key: OctKey


def v4_keys(secrets: Sequence[str]) -> list[_Key]:
    return [_Key("A256GCM", OctKey.import_key(_hkdf(s, "", V4_INFO, 32))) for s in secrets]


def v5_keys(secrets: Sequence[str], cookie_name: str) -> list[_Key]:
    info = f"Auth.js Generated Encryption Key ({cookie_name})".encode()
    keys: list[_Key] = []
    for s in secrets:
        keys.append(_Key("A256CBC-HS512", OctKey.import_key(_hkdf(s, cookie_name, info, 64))))
        keys.append(_Key("A256GCM", OctKey.import_key(_hkdf(s, cookie_name, info, 32))))
    return keys


def read_cookie(cookies: dict[str, str], name: str) -> str | None:
    """The cookie `name`, whole or joined from its chunks `name.0`, `name.1`, …"""
    whole = cookies.get(name)
    if whole:
        return whole
    parts: list[str] = []
    for i in range(MAX_CHUNKS):
        part = cookies.get(f"{name}.{i}")
        if part is None:
            break
        parts.append(part)
    return "".join(parts) or None


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


class SessionCookieAuth:
    """An `Authenticator.extra` method: a Principal from a NextAuth/Auth.js session cookie, None
    when the request carries none, 401 when it carries one that does not decrypt or has expired,
    403 when a cookie-authenticated state-changing request comes from a foreign origin."""

    def __init__(
        self,
        *,
        v4_secrets: Sequence[str],
        v5_secrets: Sequence[str],
        allowed_origins: Sequence[str],
        now: Callable[[], float] = time.time,
    ) -> None:
        # Each cookie name with the keys that may have encrypted it, newest format first.
        self.candidates: list[tuple[str, list[_Key]]] = []
        if v5_secrets:
            self.candidates += [(name, v5_keys(v5_secrets, name)) for name in V5_COOKIES]
        if v4_secrets:
            keys = v4_keys(v4_secrets)
            self.candidates += [(name, keys) for name in V4_COOKIES]
        self.allowed_origins = {o for o in (_origin(x) for x in allowed_origins) if o}
        self.now = now

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionCookieAuth:
        """NEXTAUTH_SECRET opens v4 cookies and AUTH_SECRET v5 ones; each stands in for the
        other when only one is set (as the libraries themselves fall back)."""
        v4 = secrets_of(settings.nextauth_secret) or secrets_of(settings.auth_secret)
        v5 = secrets_of(settings.auth_secret) or secrets_of(settings.nextauth_secret)
        if settings.effective_auth_mode == "dev":
            log.warning(
                "auth.cookie_in_dev_mode",
                message="session cookies are accepted, but so is X-User-Id (AUTH_MODE=dev); "
                "set AUTH_JWT_SECRET or AUTH_MODE=jwt in production",
            )
        return cls(
            v4_secrets=v4,
            v5_secrets=v5,
            allowed_origins=[*settings.allowed_origins, settings.effective_public_url],
        )

    async def __call__(self, request: Request) -> Principal | None:
        found = False
        for name, keys in self.candidates:
            token = read_cookie(request.cookies, name)
            if token is None:
                continue
            found = True
            claims = self._decrypt(token, keys)
            if claims is not None:
                principal = self._principal(claims)
                self._check_origin(request)
                return principal
        if found:
            raise Unauthorized("Invalid or expired session cookie; sign in again.")
        return None

    def _decrypt(self, token: str, keys: list[_Key]) -> dict[str, Any] | None:
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 4:
            return None
        for key in keys:
            try:
                obj = jwe.decrypt_compact(token, key.key, algorithms=["dir", key.enc])
            except (JoseError, ValueError):
                continue
            try:
                claims = json.loads(obj.plaintext or b"")
            except ValueError:
                return None
            if not isinstance(claims, dict):
                return None
            exp = claims.get("exp")
            if not isinstance(exp, int | float) or exp + LEEWAY_SECONDS < self.now():
                return None
            return claims
        return None

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        user = next(
            (v for k in ("sub", "id", "email") if isinstance(v := claims.get(k), str) and v),
            None,
        )
        if user is None or len(user) > 200:
            raise Unauthorized("Session has no usable user id (sub, id or email).")
        role = "admin" if claims.get("role") == "admin" else "user"
        return Principal(user, role, "cookie")

    def _check_origin(self, request: Request) -> None:
        if request.method in SAFE_METHODS:
            return
        origin = request.headers.get("origin")
        if origin is None or origin == "null":
            referer = request.headers.get("referer")
            origin = _origin(referer) if referer else None
        own = _origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
        if origin is not None and (origin.lower() in self.allowed_origins or origin.lower() == own):
            return
        log.warning("auth.csrf_refused", origin=origin, path=request.url.path)
        raise Forbidden(
            "Cross-site request refused: a request signed in by cookie must come from an "
            "allowed origin (ALLOWED_ORIGINS)."
        )
