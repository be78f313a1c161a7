"""Who is calling: with AUTH_JWT_SECRET set, only a valid HS256 bearer token with `sub` and `exp`
gets in; the `role` claim decides admin; X-User-Id means nothing. Dev mode needs X-User-Id."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi import Depends

from midori_preview.app import create_app
from midori_preview.auth import Principal
from midori_preview.deps import current_admin, current_user
from tests.conftest import Backend, make_settings
from tests.previews.helpers import API, files_body

SECRET = "test-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too


def token(claims: dict[str, Any] | None = None, *, key: str = SECRET, alg: str = "HS256") -> str:
    payload: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 600}
    payload.update(claims or {})
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key, algorithm=alg)


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token (PyJWT refuses to mint one with a key, so build it by hand)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def bearer(value: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}", **extra}


async def _client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)

    @app.get("/_test/whoami")
    async def whoami(user: Principal = Depends(current_user)) -> dict[str, Any]:
        return {"user": user.user_id, "admin": user.is_admin, "via": user.via}

    @app.get("/_test/admin")
    async def admin_only(user: Principal = Depends(current_admin)) -> dict[str, str]:
        return {"user": user.user_id}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        ) as client,
    ):
        yield client
    await app.state.services.previews.shutdown()


@pytest.fixture
async def jwt_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(tmp_path, Backend("embedded", None, None), auth_jwt_secret=SECRET)
    assert settings.effective_auth_mode == "jwt"
    async for client in _client(settings):
        yield client


async def test_valid_token_works(jwt_client: httpx.AsyncClient) -> None:
    res = await jwt_client.get("/_test/whoami", headers=bearer(token()))
    assert res.status_code == 200
    assert res.json() == {"user": "alice", "admin": False, "via": "jwt"}
    assert (await jwt_client.get("/api/preview/usage", headers=bearer(token()))).status_code == 200


def expired() -> str:
    return token({"exp": int(time.time()) - 120})


BAD_TOKENS = {
    "expired": expired,
    "missing exp": lambda: token({"exp": None}),
    "missing sub": lambda: token({"sub": None}),
    "empty sub": lambda: token({"sub": ""}),
    "non-string sub": lambda: jwt.encode(
        {"sub": 42, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256"
    ),
    "wrong secret": lambda: token(key="another-secret-" + "0123456789abcdef" * 4),
    "alg none": lambda: unsigned({"sub": "alice", "exp": int(time.time()) + 600}),
    "HS512 with the right secret": lambda: token(alg="HS512"),
    "not before in the future": lambda: token({"nbf": int(time.time()) + 600}),
    "garbage": lambda: "not.a.jwt",
    "payload swapped": lambda: ".".join(
        [token().split(".")[0], token({"sub": "mallory"}).split(".")[1], token().split(".")[2]]
    ),
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_tokens_get_401(jwt_client: httpx.AsyncClient, make: Any) -> None:
    for path in ("/_test/whoami", "/api/preview/usage", f"{API}/status?sandboxId=x"):
        res = await jwt_client.get(path, headers=bearer(make()))
        assert res.status_code == 401, (path, res.text)
        assert res.json()["error"]["code"] == "unauthorized"


async def test_role_claim_decides_admin(jwt_client: httpx.AsyncClient) -> None:
    admin = await jwt_client.get("/_test/admin", headers=bearer(token({"role": "admin"})))
    assert admin.status_code == 200
    who = await jwt_client.get("/_test/whoami", headers=bearer(token({"role": "admin"})))
    assert who.json()["admin"] is True

    for role in (None, "user", "Admin", ["admin"]):
        res = await jwt_client.get("/_test/admin", headers=bearer(token({"role": role})))
        assert res.status_code == 403, role
        assert res.json()["error"]["code"] == "forbidden"
    # A header cannot promote a token's user.
    res = await jwt_client.get("/_test/admin", headers=bearer(token(), **{"X-User-Role": "admin"}))
    assert res.status_code == 403


async def test_x_user_id_is_ignored_in_jwt_mode(jwt_client: httpx.AsyncClient) -> None:
    res = await jwt_client.get("/_test/whoami", headers={"X-User-Id": "alice"})
    assert res.status_code == 401
    res = await jwt_client.post(
        API, json=files_body("p", {"index.html": "x"}), headers={"X-User-Id": "alice"}
    )
    assert res.status_code == 401

    # With a token, the token's subject is the caller, whatever X-User-Id says.
    res = await jwt_client.get("/_test/whoami", headers=bearer(token(), **{"X-User-Id": "bob"}))
    assert res.json()["user"] == "alice"
    created = await jwt_client.post(
        API,
        json=files_body("p", {"index.html": "x"}),
        headers=bearer(token(), **{"X-User-Id": "bob"}),
    )
    assert created.status_code == 202, created.text
    sandbox_id = created.json()["sandboxId"]
    mine = await jwt_client.get(f"{API}/{sandbox_id}", headers=bearer(token()))
    assert mine.status_code == 200
    bobs = await jwt_client.get(f"{API}/{sandbox_id}", headers=bearer(token({"sub": "bob"})))
    assert bobs.status_code == 404
    stopped = await jwt_client.post(
        f"{API}/stop", json={"sandboxId": sandbox_id}, headers=bearer(token())
    )
    assert stopped.json()["status"] == "stopped"


async def test_audience_and_issuer_when_configured(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        Backend("embedded", None, None),
        auth_jwt_secret=SECRET,
        auth_jwt_audience="midori-preview",
        auth_jwt_issuer="https://midori.example",
    )
    good = {"aud": "midori-preview", "iss": "https://midori.example"}
    async for client in _client(settings):
        ok = await client.get("/_test/whoami", headers=bearer(token(good)))
        assert ok.status_code == 200
        for bad in ({"aud": None}, {"aud": "other"}, {"iss": None}, {"iss": "https://evil"}):
            res = await client.get("/_test/whoami", headers=bearer(token({**good, **bad})))
            assert res.status_code == 401, bad


async def test_dev_mode_needs_x_user_id(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, Backend("embedded", None, None))
    assert settings.effective_auth_mode == "dev"
    async for client in _client(settings):
        assert (await client.get("/_test/whoami")).status_code == 401
        assert (await client.get("/_test/whoami", headers={"X-User-Id": "  "})).status_code == 401
        res = await client.get("/_test/whoami", headers={"X-User-Id": "alice"})
        assert res.json() == {"user": "alice", "admin": False, "via": "dev"}
