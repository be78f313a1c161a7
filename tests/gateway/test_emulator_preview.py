"""The Daytona emulator's preview proxy behaves like Daytona's own (apps/proxy in Daytona's
source): browsers get the warning page unless the request skips it, a missing or wrong token is
a 307 to the login page, a sandbox that is not started is a 400, nothing listening is a 502,
preview traffic is the sandbox's activity unless it says not to be, WebSockets pass. The
gateway's tests rely on all of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.asyncio.client import connect

from midori_preview.providers.base import FileData, ProviderSandbox, SandboxSpec
from midori_preview.providers.daytona import DaytonaProvider
from tests.gateway.conftest import SITE_SERVER
from tests.providers.test_daytona_provider import make_config
from tests.support.daytona import DaytonaEmulator
from tests.support.daytona.preview import browser_name
from tests.support.servers import free_port
from tests.support.waiting import eventually

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
HEADLESS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "HeadlessChrome/131.0.0.0 Safari/537.36"
)
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
WARNING = "Preview URL Warning"


@dataclass
class Served:
    emulator: DaytonaEmulator
    provider: DaytonaProvider
    sandbox: ProviderSandbox
    url: str
    token: str
    port: int


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    async with DaytonaEmulator() as emulator:
        provider = DaytonaProvider(make_config(emulator))
        try:
            sandbox = await provider.create(SandboxSpec("sbx-site", "alice", "site"), timeout=30)
            await provider.upload(sandbox, [FileData("server.py", SITE_SERVER.encode())])
            port = free_port()
            await provider.start_server(sandbox, "exec python3 server.py", port=port)
            await eventually(
                lambda: provider.probe(sandbox, port, timeout=1), within=20, what="serving"
            )
            link = await provider.preview_link(sandbox, port, open_url_ttl_seconds=60)
            yield Served(emulator, provider, sandbox, link.url, link.token, port)
        finally:
            await provider.aclose()


def test_browsers_are_told_apart_as_daytona_does() -> None:
    assert browser_name(CHROME) == "chrome"
    assert browser_name(FIREFOX) == "firefox"
    assert browser_name(HEADLESS) == "headless chrome"  # not a browser to Daytona
    assert browser_name("python-httpx/0.28.1") == ""
    assert browser_name("curl/8.5.0") == ""


async def test_browsers_get_the_warning_page_unless_it_is_skipped(served: Served) -> None:
    token = {"x-daytona-preview-token": served.token}
    async with httpx.AsyncClient(trust_env=False) as http:
        for agent in (CHROME, FIREFOX):
            page = await http.get(served.url, headers={**token, "User-Agent": agent})
            assert page.status_code == 200 and WARNING in page.text, agent
            assert "บ้านกาแฟ" not in page.text
        # No token at all: the warning still comes first (Daytona checks it before the token).
        assert WARNING in (await http.get(served.url, headers={"User-Agent": CHROME})).text

        skipped = {**token, "User-Agent": CHROME, "X-Daytona-Skip-Preview-Warning": "true"}
        assert "บ้านกาแฟ" in (await http.get(served.url, headers=skipped)).text
        for agent in (HEADLESS, "python-httpx/0.28.1"):
            site = await http.get(served.url, headers={**token, "User-Agent": agent})
            assert "บ้านกาแฟ" in site.text, agent

        # "I understand": a cookie for a day, then the site.
        accepted = await http.post(
            f"{served.emulator.base_url}/accept-daytona-preview-warning",
            params={"redirect": "/elsewhere"},
            headers={"User-Agent": CHROME},
        )
        assert accepted.status_code == 302 and accepted.headers["location"] == "/elsewhere"
        assert "daytona-preview-page-accepted=true" in accepted.headers["set-cookie"]
        cookie = {"Cookie": "daytona-preview-page-accepted=true"}
        site = await http.get(served.url, headers={**token, **cookie, "User-Agent": CHROME})
        assert "บ้านกาแฟ" in site.text


async def test_bad_credentials_go_to_the_login_page(served: Served) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        wrong = served.token[:-1] + ("1" if served.token.endswith("0") else "0")
        for headers in ({}, {"x-daytona-preview-token": wrong}):
            res = await http.get(served.url, headers=headers)
            assert res.status_code == 307
            assert res.headers["location"].startswith(f"{served.emulator.base_url}/oidc/authorize")
        unknown = served.url.replace(served.sandbox.provider_id, "no-such-sandbox")
        assert (
            await http.get(unknown, headers={"x-daytona-preview-token": "x"})
        ).status_code == 307
        right = await http.get(served.url, headers={"x-daytona-preview-token": served.token})
        assert right.status_code == 200


async def test_not_started_is_400_and_nothing_listening_is_502(served: Served) -> None:
    token = {"x-daytona-preview-token": served.token}
    elsewhere = served.url.replace(f"/{served.port}/", f"/{free_port()}/")
    async with httpx.AsyncClient(trust_env=False) as http:
        nobody = await http.get(elsewhere, headers=token)
        assert (nobody.status_code, nobody.content) == (502, b"")
        # Stopped by Daytona (kept, not deleted): its runner has no address for it.
        stopped = served.emulator.plant_sandbox({"midori-preview": "1"}, auto_delete_interval=-1)
        served.emulator.stop_sandbox(stopped)
        view = served.emulator.sandboxes[stopped]
        url = served.url.replace(served.sandbox.provider_id, stopped)
        res = await http.get(url, headers={"x-daytona-preview-token": view.preview_token})
        assert res.status_code == 400


async def test_preview_traffic_is_activity_unless_told_otherwise(served: Served) -> None:
    # A sandbox of its own (the fixture's probes were activity already): nothing listens on
    # the port, but the request got through the proxy, which is what counts.
    pid = served.emulator.plant_sandbox({"midori-preview": "1"})
    token = {"x-daytona-preview-token": served.emulator.sandboxes[pid].preview_token}
    url = f"{served.emulator.base_url}/preview/{pid}/{free_port()}/"
    async with httpx.AsyncClient(trust_env=False) as http:
        skip = {**token, "X-Daytona-Skip-Last-Activity-Update": "true"}
        for _ in range(3):
            assert (await http.get(url, headers=skip)).status_code == 502
        assert served.emulator.preview_activity(pid) == 0
        assert (await http.get(url, headers=token)).status_code == 502
        assert served.emulator.preview_activity(pid) == 1
        assert (await http.get(url, headers=token)).status_code == 502
        assert served.emulator.preview_activity(pid) == 1, "one update per 45 s, as Daytona"


async def test_websockets_pass_through_the_emulator(served: Served) -> None:
    url = "ws" + served.url[4:] + "ws"
    headers = {"x-daytona-preview-token": served.token, "User-Agent": CHROME}
    async with connect(url, additional_headers=headers, subprotocols=["echo"], proxy=None) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "echo"  # no warning page for a WebSocket, even from a browser
        await ws.send("ping ไทย")
        assert await ws.recv() == "ping ไทย"
