"""Who is calling: a bearer JWT (HS256, fixed algorithm list) or, in dev mode, `X-User-Id`.
(Routes get the caller through `deps.current_user` / `deps.current_admin`.)"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import jwt
from fastapi import Request

from midori_preview.errors import Unauthorized
from midori_preview.settings import Settings


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: str = "user"
    via: Literal["jwt", "dev", "cookie"] = "jwt"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class Authenticator:
    """Turns a request into a Principal. Extra methods (e.g. session cookies) plug in as
    `extra` callables tried after the bearer token."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.effective_auth_mode
        self.secret = (
            settings.auth_jwt_secret.get_secret_value() if settings.auth_jwt_secret else None
        )
        self.audience = settings.auth_jwt_audience
        self.issuer = settings.auth_jwt_issuer
        if self.mode == "jwt" and not (
            self.secret or settings.nextauth_secret or settings.auth_secret
        ):
            raise RuntimeError(
                "AUTH_MODE=jwt needs AUTH_JWT_SECRET (or NEXTAUTH_SECRET/AUTH_SECRET)"
            )
        self.extra: list[Callable[[Request], Awaitable[Principal | None]]] = []

    def _from_jwt(self, token: str) -> Principal:
        assert self.secret is not None
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError:
            raise Unauthorized("Invalid or expired token.") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("Token has no subject.")
        role = "admin" if claims.get("role") == "admin" else "user"
        return Principal(sub, role, "jwt")

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer ") and self.secret:
            return self._from_jwt(header[7:].strip())
        for method in self.extra:
            principal = await method(request)
            if principal is not None:
                return principal
        if self.mode == "dev":
            user = request.headers.get("x-user-id", "").strip()
            if user:
                if len(user) > 200:
                    raise Unauthorized("X-User-Id is too long.")
                role = "admin" if request.headers.get("x-user-role") == "admin" else "user"
                return Principal(user, role, "dev")
            raise Unauthorized("Send X-User-Id (dev mode) or a bearer token.")
        raise Unauthorized("Missing bearer token.")
