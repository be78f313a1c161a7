"""NextAuth (v4) and Auth.js (v5) session cookies, minted by the real `next-auth` and
`@auth/core` packages, open the API in jwt mode: both formats, chunked cookies and rotated
secrets are accepted; a wrong secret or salt, a tampered or expired cookie are 401; a
state-changing request signed in by cookie from a foreign origin is 403 (CSRF); CORS answers the
allowed origins only. And the demo page works with nothing but the session cookie."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from starlette.requests import Request

from midori_preview.auth import Principal
from midori_preview.errors import PreviewError
from tests.conftest import Backend, Running, make_settings, running_app
from tests.web.conftest import API, CAFE_NAME, Mint, bearer, live_server, shot, watch

ALLOWED = "https://midori.example"
SETTINGS: dict[str, Any] = {
    # AUTH_MODE=jwt: X-User-Id is not accepted, cookies must stand on their own
    "auth_jwt_secret": "service-jwt-secret-for-the-web-tests-0123456789",
    "nextauth_secret": "v4-current-secret,v4-previous-secret",
    "auth_secret": "v5-current-secret,v5-previous-secret",
    "allowed_origins": [ALLOWED],
}
PAD = "x" * 6000  # a session this large is split into cookies .0, .1, …

# name → mint request (see tests/web/node/mint.mjs)
TOKENS: dict[str, dict[str, Any]] = {
    "v4": {"format": "v4", "claims": {"sub": "user-v4", "name": "Ann", "role": "admin"},
           "secret": "v4-current-secret"},
    "v4_rotated": {"format": "v4", "claims": {"sub": "user-v4-old"},
                   "secret": "v4-previous-secret"},
    "v4_email_only": {"format": "v4", "claims": {"email": "mail@example.com"},
                      "secret": "v4-current-secret"},
    "v4_chunked": {"format": "v4", "claims": {"sub": "user-v4-big", "pad": PAD},
                   "secret": "v4-current-secret"},
    "v4_wrong_secret": {"format": "v4", "claims": {"sub": "x"}, "secret": "not-our-secret"},
    "v4_expired": {"format": "v4", "claims": {"sub": "x"}, "secret": "v4-current-secret",
                   "maxAge": -60},
    "v5": {"format": "v5", "claims": {"sub": "user-v5", "email": "b@example.com"},
           "secret": "v5-current-secret"},
    "v5_rotated": {"format": "v5", "claims": {"sub": "user-v5-old"},
                   "secret": "v5-previous-secret"},
    "v5_secure": {"format": "v5", "claims": {"sub": "user-v5-secure"},
                  "secret": "v5-current-secret", "cookieName": "__Secure-authjs.session-token"},
    "v5_chunked": {"format": "v5", "claims": {"sub": "user-v5-big", "role": "admin", "pad": PAD},
                   "secret": "v5-current-secret"},
    "v5_wrong_secret": {"format": "v5", "claims": {"sub": "x"}, "secret": "not-our-secret"},
    "v5_wrong_salt": {"format": "v5", "claims": {"sub": "x"}, "secret": "v5-current-secret",
                      "salt": "next-auth.session-token"},
    "v5_expired": {"format": "v5", "claims": {"sub": "x"}, "secret": "v5-current-secret",
                   "maxAge": -60},
    "v5_browser": {"format": "v5", "claims": {"sub": "cookie-user"},
                   "secret": "v5-current-secret"},
}  # fmt: skip


@pytest.fixture(scope="module")
def cookies(mint: Mint) -> dict[str, list[dict[str, str]]]:
    """name → the cookies a browser would hold, as the real libraries set them."""
    minted = mint(list(TOKENS.values()))
    return {name: m["cookies"] for name, m in zip(TOKENS, minted, strict=True)}


def header(jar: list[dict[str, str]]) -> str:
    return "; ".join(f"{c['name']}={c['value']}" for c in jar)


def tampered(jar: list[dict[str, str]]) -> list[dict[str, str]]:
    """One character of the ciphertext changed (the JWE's 4th part)."""
    (cookie,) = jar
    parts = cookie["value"].split(".")
    parts[3] = ("A" if parts[3][0] != "A" else "B") + parts[3][1:]
    return [{"name": cookie["name"], "value": ".".join(parts)}]


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[Running]:
    settings = make_settings(tmp_path, Backend("embedded", None, None), **SETTINGS)
    assert settings.effective_auth_mode == "jwt"
    async with running_app(settings) as running:
        yield running


async def who(app: Running, jar: list[dict[str, str]], method: str = "GET") -> Principal:
    """The principal the service makes of a request carrying these cookies."""
    scope = {
        "type": "http",
        "method": method,
        "path": "/",
        "headers": [(b"cookie", header(jar).encode()), (b"host", b"localhost:8000")],
        "query_string": b"",
        "scheme": "http",
        "server": ("localhost", 8000),
    }
    principal: Principal = await app.services.authenticator.authenticate(Request(scope))
    return principal


@pytest.mark.parametrize(
    ("name", "user", "role"),
    [
        ("v4", "user-v4", "admin"),
        ("v4_rotated", "user-v4-old", "user"),
        ("v4_email_only", "mail@example.com", "user"),
        ("v4_chunked", "user-v4-big", "user"),
        ("v5", "user-v5", "user"),
        ("v5_rotated", "user-v5-old", "user"),
        ("v5_secure", "user-v5-secure", "user"),
        ("v5_chunked", "user-v5-big", "admin"),
    ],
)
async def test_session_cookies_are_accepted(
    app: Running, cookies: dict[str, list[dict[str, str]]], name: str, user: str, role: str
) -> None:
    jar = cookies[name]
    if name.endswith("_chunked"):
        assert [c["name"].rsplit(".", 1)[1] for c in jar][:2] == ["0", "1"]
    res = await app.client.get(f"{API}/usage", headers={"Cookie": header(jar)})
    assert res.status_code == 200, res.text
    assert await who(app, jar) == Principal(user, role, "cookie")
    admin = await app.client.get(f"{API}/admin/sandboxes", headers={"Cookie": header(jar)})
    assert admin.status_code == (200 if role == "admin" else 403), admin.text


@pytest.mark.parametrize(
    "name",
    ["v4_wrong_secret", "v4_expired", "v4_tampered", "v5_wrong_secret", "v5_wrong_salt",
     "v5_expired", "v5_tampered", "v5_under_v4_name"],
)  # fmt: skip
async def test_bad_session_cookies_are_401(
    app: Running, cookies: dict[str, list[dict[str, str]]], name: str
) -> None:
    if name.endswith("_tampered"):
        jar = tampered(cookies[name.split("_")[0]])
    elif name == "v5_under_v4_name":
        jar = [{"name": "next-auth.session-token", "value": cookies["v5"][0]["value"]}]
    else:
        jar = cookies[name]
    res = await app.client.get(f"{API}/usage", headers={"Cookie": header(jar)})
    assert res.status_code == 401, res.text
    assert res.json()["error"]["code"] == "unauthorized"
    with pytest.raises(PreviewError) as raised:
        await who(app, jar)
    assert raised.value.status == 401


async def test_jwt_mode_without_a_cookie_still_needs_a_token(app: Running) -> None:
    res = await app.client.get(f"{API}/usage", headers={"X-User-Id": "someone"})
    assert res.status_code == 401
    ok = await app.client.get(
        f"{API}/usage", headers={"Authorization": f"Bearer {bearer(app.settings, 'someone')}"}
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": "https://evil.example"}, 403),
        ({}, 403),  # neither Origin nor Referer: refused
        ({"Origin": "null"}, 403),
        ({"Referer": "https://evil.example/page"}, 403),
        ({"Origin": ALLOWED}, 404),  # past the CSRF check: the sandbox does not exist
        ({"Origin": "http://localhost:8000"}, 404),  # the service's own origin (PUBLIC_URL)
        ({"Referer": f"{ALLOWED}/projects/1"}, 404),
    ],
)
async def test_cookie_posts_must_come_from_an_allowed_origin(
    app: Running, cookies: dict[str, list[dict[str, str]]], headers: dict[str, str], status: int
) -> None:
    res = await app.client.post(
        f"{API}/daytona/stop",
        json={"sandboxId": "nosuchsandbox"},
        headers={"Cookie": header(cookies["v5"]), **headers},
    )
    assert res.status_code == status, res.text
    assert res.json()["error"]["code"] == ("forbidden" if status == 403 else "sandbox_not_found")


async def test_csrf_check_is_for_cookies_and_unsafe_methods_only(
    app: Running, cookies: dict[str, list[dict[str, str]]]
) -> None:
    evil = {"Origin": "https://evil.example"}
    token = {"Authorization": f"Bearer {bearer(app.settings, 'api-user')}"}
    res = await app.client.post(
        f"{API}/daytona/stop", json={"sandboxId": "nosuchsandbox"}, headers={**token, **evil}
    )
    assert res.status_code == 404  # a bearer token cannot be forged by another site
    res = await app.client.get(f"{API}/usage", headers={"Cookie": header(cookies["v4"]), **evil})
    assert res.status_code == 200  # reading is safe; CORS keeps the answer from evil.example


async def test_cors_answers_allowed_origins_with_credentials(app: Running) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    ok = await app.client.options(
        f"{API}/daytona/heartbeat", headers={"Origin": ALLOWED, **preflight}
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED
    assert ok.headers["access-control-allow-credentials"] == "true"
    bad = await app.client.options(
        f"{API}/daytona/heartbeat", headers={"Origin": "https://evil.example", **preflight}
    )
    assert "access-control-allow-origin" not in bad.headers


async def test_demo_page_runs_on_the_session_cookie_alone(
    tmp_path: Path,
    browser: Browser,
    cookies: dict[str, list[dict[str, str]]],
) -> None:
    async with live_server(
        tmp_path, Backend("embedded", None, None), heartbeat_interval_seconds=2, **SETTINGS
    ) as live:
        context = await browser.new_context(viewport={"width": 1280, "height": 1400})
        await context.add_cookies(
            [
                {"name": c["name"], "value": c["value"], "url": live.url, "httpOnly": True,
                 "sameSite": "Lax"}
                for c in cookies["v5_browser"]
            ]
        )  # fmt: skip
        page = await context.new_page()
        problems = watch(page)
        await page.goto(f"{live.url}/test")
        await expect(page.locator("#auth-jwt")).to_be_visible()
        await expect(page.locator("#cookie-note")).to_be_visible()
        await expect(page.locator("#token")).to_have_value("")
        await page.get_by_role("button", name="Start preview").click()
        await expect(page.frame_locator("#frame").get_by_text(CAFE_NAME).first).to_be_visible(
            timeout=20_000
        )
        await expect(page.locator("#heartbeat")).to_have_attribute("data-beats", "2", timeout=6_000)
        sandbox_id = await page.get_attribute("#preview", "data-sandbox-id")
        assert sandbox_id
        await shot(page, "demo-7-session-cookie")
        assert problems == []
        # The keepalive stop on close carries the cookie and the page's own Origin.
        await page.close(run_before_unload=True)
        stopped = await live.wait_status(sandbox_id, "cookie-user", "stopped", timeout=10)
        assert stopped["reason"] == "user"
        await context.close()
