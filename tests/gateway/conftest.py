"""Previews through the gateway, on both providers: the service behind a real uvicorn server (so
streams and WebSockets are real), a sandbox running `site_server.py`, and clients that reach
the service's preview hosts on 127.0.0.1 with the preview host in `Host` (as a browser resolving
`*.localhost` would)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import connect

from midori_preview.app import create_app
from midori_preview.providers.base import SandboxProvider
from midori_preview.providers.daytona import DaytonaProvider
from midori_preview.settings import Settings
from tests.conftest import Backend, Running, make_settings, user_headers
from tests.previews.helpers import API, TOKEN_HEADER, files_body
from tests.providers.test_daytona_provider import make_config
from tests.support.daytona import DaytonaEmulator
from tests.support.servers import drop_redis_keys, free_port, uvicorn_serving

SITE_SERVER = (Path(__file__).parent / "site_server.py").read_text(encoding="utf-8")
PROVIDERS = ["local", "daytona"]


@asynccontextmanager
async def serving(
    settings: Settings, provider: SandboxProvider | None = None
) -> AsyncIterator[Running]:
    """The app behind uvicorn on its own port, with an httpx client pointed at it."""
    app = create_app(settings, provider=provider)
    try:
        async with (
            uvicorn_serving(app, settings.port),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{settings.port}", trust_env=False, timeout=30
            ) as client,
        ):
            yield Running(app, client, settings)
    finally:
        await drop_redis_keys(settings)


@asynccontextmanager
async def provider_app(
    tmp_path: Path, backend: Backend, kind: str, **overrides: Any
) -> AsyncIterator[tuple[Running, DaytonaEmulator | None]]:
    """The service on `kind` ("local", or "daytona" against a fresh emulator)."""
    port = free_port()
    settings = make_settings(tmp_path, backend, port=port, preview_public_port=port, **overrides)
    if kind == "local":
        async with serving(settings) as running:
            yield running, None
        return
    async with DaytonaEmulator() as emulator:
        provider = DaytonaProvider(make_config(emulator, deployment=settings.preview_deployment))
        try:
            async with serving(settings, provider) as running:
                yield running, emulator
        finally:
            await provider.aclose()


@dataclass
class Site:
    """A running preview of `site_server.py` and ways to reach it through the gateway."""

    running: Running
    status: dict[str, Any]
    workdir: Path  # the sandbox's working directory, as seen from this host
    emulator: DaytonaEmulator | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sandbox_id(self) -> str:
        return str(self.status["sandboxId"])

    def host(self, link: str = "previewUrl") -> str:
        return urlsplit(self.status[link]).netloc

    def headers(self, link: str = "previewUrl", **extra: str) -> dict[str, str]:
        out = {"Host": self.host(link)}
        if link == "previewUrl":
            out[TOKEN_HEADER] = self.status["previewToken"]
        return {**out, **extra}

    async def get(self, path: str = "/", link: str = "previewUrl", **extra: str) -> httpx.Response:
        return await self.running.client.get(path, headers=self.headers(link, **extra))

    def websocket(self, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """A WebSocket to the preview host (connect over 127.0.0.1 with the preview host name)."""
        sock = socket.create_connection(("127.0.0.1", self.running.settings.port))
        given = dict(
            headers if headers is not None else {TOKEN_HEADER: self.status["previewToken"]}
        )
        return connect(
            f"ws://{self.host()}{path}",
            sock=sock,
            additional_headers=given,
            proxy=None,
            open_timeout=10,
            **kwargs,
        )


def provider_workdir(running: Running, emulator: DaytonaEmulator | None, sandbox_id: str) -> Path:
    if emulator is None:
        return running.settings.data_dir / "sandboxes" / sandbox_id / "work"
    [provider_id] = [
        pid
        for pid, view in emulator.sandboxes.items()
        if view.labels.get("midori-preview/sandbox-id") == sandbox_id
    ]
    return emulator.sandbox_home(provider_id) / "app"


async def start_site(running: Running, emulator: DaytonaEmulator | None, **extra: Any) -> Site:
    body = files_body(
        "site",
        {"server.py": SITE_SERVER},
        start="exec python3 server.py",
        port=free_port(),
        **extra,
    )
    res = await running.client.post(API, json=body, headers=user_headers())
    assert res.status_code == 202, res.text
    status = await running.wait_until(res.json()["sandboxId"], "running")
    return Site(running, status, provider_workdir(running, emulator, status["sandboxId"]), emulator)


@pytest.fixture(params=PROVIDERS)
async def site(
    request: pytest.FixtureRequest, tmp_path: Path, pg_backend: Backend
) -> AsyncIterator[Site]:
    async with provider_app(tmp_path, pg_backend, request.param) as (running, emulator):
        yield await start_site(running, emulator)


async def read_until(stream: AsyncIterator[bytes], wanted: bytes, got: bytes = b"") -> bytes:
    """Read from `stream` until `wanted` is in what was read (callers bound it with a timeout)."""
    async for chunk in stream:
        got += chunk
        if wanted in got:
            return got
    return got
