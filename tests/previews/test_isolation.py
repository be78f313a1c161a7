"""One user's preview is invisible to everyone else: another user gets the same 404 as for an id
that does not exist, on every route; the preview itself answers only to its own token or to an
unexpired, untampered signed link, and to nothing once it is stopped."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from midori_preview.gateway.labels import sign_label
from tests.conftest import Running, user_headers
from tests.previews.helpers import (
    API,
    TOKEN_HEADER,
    create_running,
    fetch_preview,
    files_body,
    get_preview,
    not_found_body,
    stop,
)

SITE = {"index.html": "<h1>alice's private site</h1>"}
UNKNOWN = "aaaaaaaaaaaaaaaa"  # shaped like a real id (16 base32 characters)


async def every_route(running: Running, sandbox_id: str, user: str) -> dict[str, httpx.Response]:
    headers = user_headers(user)
    client = running.client
    body = {"sandboxId": sandbox_id}
    return {
        "status": await client.get(f"{API}/status", params=body, headers=headers),
        "by path": await client.get(f"{API}/{sandbox_id}", headers=headers),
        "events": await client.get(f"{API}/events", params=body, headers=headers),
        "stop": await client.post(f"{API}/stop", json=body, headers=headers),
        "heartbeat": await client.post(f"{API}/heartbeat", json=body, headers=headers),
    }


async def test_other_users_get_the_unknown_id_404_on_every_route(service_app: Running) -> None:
    status = await create_running(service_app, files_body("private", SITE))
    sandbox_id = status["sandboxId"]

    theirs = await every_route(service_app, sandbox_id, "bob")
    unknown = await every_route(service_app, UNKNOWN, "bob")
    for route, res in theirs.items():
        body = not_found_body(res, sandbox_id)
        assert body["error"]["code"] == "sandbox_not_found", route
        assert body == not_found_body(unknown[route], UNKNOWN), route
        assert res.headers["content-type"] == unknown[route].headers["content-type"], route
        assert "private" not in res.text and "alice" not in res.text, route

    # Bob's stop and heartbeat did nothing: Alice's preview still runs and serves.
    again = await service_app.wait_until(sandbox_id, "running")
    assert again["lastHeartbeatAt"] == status["lastHeartbeatAt"]
    page = await fetch_preview(service_app, status)
    assert page.status_code == 200
    assert "private site" in page.text


async def test_admin_role_header_does_not_open_other_users_sandboxes(
    service_app: Running,
) -> None:
    status = await create_running(service_app, files_body("private", SITE))
    res = await service_app.client.get(
        f"{API}/{status['sandboxId']}", headers=user_headers("bob", admin=True)
    )
    assert res.status_code == 404


def b36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while n:
        n, r = divmod(n, 36)
        out = digits[r] + out
    return out or "0"


def relabel(url: str, label: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.split(".", 1)[1]
    return f"{parts.scheme}://{label}.{host}/"


async def test_preview_answers_only_to_its_credentials(service_app: Running) -> None:
    alice = await create_running(service_app, files_body("private", SITE))
    bob = await create_running(service_app, files_body("bobs", {"index.html": "bob"}), user="bob")
    url, token = alice["previewUrl"], alice["previewToken"]

    right = await get_preview(service_app, url, headers={TOKEN_HEADER: token})
    assert right.status_code == 200
    assert "private site" in right.text
    assert right.headers["cache-control"] == "private, no-store"

    refusals: dict[str, dict[str, str]] = {
        "missing": {},
        "wrong": {TOKEN_HEADER: token[:-1] + ("A" if token[-1] != "A" else "B")},
        "empty": {TOKEN_HEADER: ""},
        "other sandbox's": {TOKEN_HEADER: bob["previewToken"]},
        "as a bearer": {"authorization": f"Bearer {token}"},
    }
    for name, headers in refusals.items():
        res = await get_preview(service_app, url, "/index.html", headers)
        assert res.status_code == 401, name
        assert "private site" not in res.text, name

    # The signed link works with no header at all, for the page and its other paths.
    open_url = alice["openUrl"]
    assert open_url and open_url != url
    signed = await get_preview(service_app, open_url)
    assert signed.status_code == 200
    assert "private site" in signed.text
    assert (await get_preview(service_app, open_url, "/index.html")).status_code == 200

    label = urlsplit(open_url).netloc.split(".", 1)[0]
    port, sandbox_id, expiry, mac = label.split("-")
    flipped = mac[:-1] + ("a" if mac[-1] != "a" else "b")
    key = service_app.services.gateway.links.key
    past = int(service_app.services.clock.now().timestamp()) - 60
    forged: dict[str, str] = {
        "tampered signature": f"{port}-{sandbox_id}-{expiry}-{flipped}",
        "extended expiry": f"{port}-{sandbox_id}-{b36(int(expiry, 36) + 86400)}-{mac}",
        "other sandbox's signature": f"{port}-{bob['sandboxId']}-{expiry}-{mac}",
        "expired (correctly signed)": sign_label(key, sandbox_id, int(port), past, token),
        "signed with another key": sign_label(b"k" * 32, sandbox_id, int(port), past + 3600, token),
    }
    for name, forged_label in forged.items():
        res = await get_preview(service_app, relabel(open_url, forged_label))
        assert res.status_code == 401, name
        assert "private site" not in res.text, name
    # The check above can pass: a fresh label signed with the real key is accepted.
    fresh = sign_label(key, sandbox_id, int(port), past + 3600, token)
    assert (await get_preview(service_app, relabel(open_url, fresh))).status_code == 200

    assert (await stop(service_app, alice["sandboxId"])).status_code == 200
    gone_token = await get_preview(service_app, url, headers={TOKEN_HEADER: token})
    gone_signed = await get_preview(service_app, open_url)
    assert (gone_token.status_code, gone_signed.status_code) == (404, 404)
    # Bob's preview is untouched by Alice's stop.
    assert (await fetch_preview(service_app, bob)).status_code == 200


async def test_unknown_preview_hosts_are_404(service_app: Running) -> None:
    for label in (f"3000-{UNKNOWN}", "nonsense", f"99999999-{UNKNOWN}", f"3000-{UNKNOWN}-1-x"):
        res = await get_preview(
            service_app, f"http://{label}.preview.localhost/", headers={TOKEN_HEADER: "x"}
        )
        assert res.status_code == 404, label


ECHO_SERVER = """
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class Echo(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "planted=1; Domain=.preview.localhost; Path=/")
        self.send_header("Set-Cookie", "own=2; Path=/")
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Echo).serve_forever()
"""


async def test_the_sandbox_never_sees_the_users_credentials_nor_sets_parent_cookies(
    service_app: Running,
) -> None:
    """A session cookie scoped to a parent domain reaches preview hosts too: the proxy must not
    hand it (or an Authorization header) to code from the project, and the project must not set
    cookies beyond its own host."""
    status = await create_running(
        service_app, files_body("echo", {"echo.py": ECHO_SERVER}, start="python3 echo.py")
    )
    res = await fetch_preview(service_app, status)
    assert res.status_code == 200
    seen = res.json()
    cookie_header = (
        "next-auth.session-token=SECRET1; theme=dark; __Secure-authjs.session-token.0=SECRET2; "
        "__Host-csrf=SECRET3; authjs.csrf-token=SECRET4"
    )
    res = await get_preview(
        service_app,
        status["previewUrl"],
        "/",
        {
            TOKEN_HEADER: status["previewToken"],
            "Cookie": cookie_header,
            "Authorization": "Bearer SECRET5",
        },
    )
    seen = res.json()
    assert "SECRET" not in str(seen), seen
    assert seen.get("cookie") == "theme=dark"
    assert "authorization" not in seen and TOKEN_HEADER not in seen
    set_cookies = res.headers.get_list("set-cookie")
    assert set_cookies == ["own=2; Path=/"], set_cookies
