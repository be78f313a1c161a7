"""Previews through the gateway on both providers (local sandboxes, and Daytona through the
emulator's preview proxy): answers pass as the server made them (compressed bytes, ranges,
HEAD), stream both ways, hop-by-hop headers and the user's credentials stay behind, WebSockets
pass through, and programs keep their status codes."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from collections.abc import AsyncIterator

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.conftest import Site, read_until
from tests.previews.helpers import TOKEN_HEADER, stop
from tests.support.waiting import eventually

PAGE = "<!doctype html><meta charset=utf-8><title>site</title><h1>บ้านกาแฟ site</h1>\n".encode()
MIB = 1024 * 1024


async def test_answers_pass_as_the_server_made_them(site: Site) -> None:
    page = await site.get("/")
    assert page.status_code == 200 and page.content == PAGE
    assert page.headers["cache-control"] == "private, no-store"  # not the server's max-age
    assert page.headers["referrer-policy"] == "same-origin"  # the host carries a credential

    head = await site.running.client.head("/", headers=site.headers())
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(PAGE))

    # Compressed: the very bytes the server sent, still compressed.
    async with site.running.client.stream(
        "GET", "/gz", headers=site.headers(**{"Accept-Encoding": "gzip"})
    ) as res:
        raw = b"".join([chunk async for chunk in res.aiter_raw()])
    assert res.headers["content-encoding"] == "gzip"
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == PAGE * 50
    assert res.headers["content-length"] == str(len(raw))

    ranged = await site.get("/bytes", Range="bytes=10-19")
    assert ranged.status_code == 206
    assert ranged.headers["content-range"] == f"bytes 10-19/{256 * 64}"
    assert ranged.content == bytes(range(10, 20))

    moved = await site.get("/redirect")
    assert moved.status_code == 302
    if site.emulator is None:  # a redirect to the upstream's own address stays on the preview
        assert moved.headers["location"] == "/page"  # host (Daytona's passes as Daytona sends it)
    # The same through the browser link (credential in the host name, no header).
    assert (await site.get("/", link="openUrl")).content == PAGE


async def test_answers_stream_as_they_are_made(site: Site) -> None:
    async with (
        asyncio.timeout(20),
        site.running.client.stream("GET", "/slow", headers=site.headers()) as res,
    ):
        chunks = res.aiter_raw()
        first = await read_until(chunks, b"first\n")
        assert first == b"first\n", "the first piece arrives while the server still holds the rest"
        (site.workdir / "release").touch()
        assert (await read_until(chunks, b"second\n", first)).endswith(b"second\n")


async def test_request_bodies_stream_under_the_cap(site: Site) -> None:
    piece = bytes(range(256)) * 4096  # 1 MiB
    received = site.workdir / "received"

    async def body() -> AsyncIterator[bytes]:
        yield piece
        # The server has the first MiB before the client sends the second: nothing buffered it.
        await eventually(
            lambda: received.exists() and int(received.read_text() or 0) >= MIB,
            within=20,
            what="the server received the first MiB",
        )
        yield piece

    headers = site.headers(**{"Content-Length": str(2 * MIB)})
    res = await site.running.client.post("/upload", content=body(), headers=headers)
    assert res.status_code == 200, res.text
    assert res.json() == {"bytes": 2 * MIB, "sha256": hashlib.sha256(piece * 2).hexdigest()}

    declared = site.headers(**{"Content-Length": str(11 * MIB)})
    too_big = await site.running.client.post("/upload", content=b"x" * (11 * MIB), headers=declared)
    assert too_big.status_code == 413

    async def endless() -> AsyncIterator[bytes]:  # chunked: no length to refuse up front
        for _ in range(11):
            yield piece

    chunked = await site.running.client.post("/upload", content=endless(), headers=site.headers())
    assert chunked.status_code == 413


async def test_headers_and_credentials_stay_on_their_hop(site: Site) -> None:
    cookies = (
        "next-auth.session-token=SECRET1; theme=dark; __Secure-authjs.session-token.0=SECRET2; "
        "__Host-csrf=SECRET3"
    )
    res = await site.get(
        "/headers",
        Cookie=cookies,
        Authorization="Bearer SECRET4",
        Connection="X-Client-Only",
        **{"X-Client-Only": "SECRET5", "X-Kept": "kept"},
    )
    seen = res.json()
    assert "SECRET" not in json.dumps(seen), seen
    assert seen["cookie"] == "theme=dark" and seen["x-kept"] == "kept"
    assert TOKEN_HEADER not in seen and "authorization" not in seen
    if site.emulator is not None:  # what the gateway told Daytona's proxy (which passes it on)
        assert seen["x-daytona-skip-preview-warning"] == "true"
        assert "x-daytona-skip-last-activity-update" not in seen  # viewers' traffic is activity
    assert res.headers.get_list("set-cookie") == ["own=2; Path=/"]  # none for a parent domain
    assert "x-upstream-only" not in res.headers  # listed in the server's Connection header


async def test_websockets_pass_through(site: Site) -> None:
    async with site.websocket("/ws", subprotocols=["echo", "other"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "echo"
        await ws.send("สวัสดี hello")
        assert await ws.recv() == "สวัสดี hello"
        await ws.send(bytes(range(256)))
        assert await ws.recv() == bytes(range(256))
        await ws.send("close")
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001

    for headers in ({}, {TOKEN_HEADER: "wrong"}):
        with pytest.raises(InvalidStatus) as refused:
            async with site.websocket("/ws", headers=headers):
                pass
        assert refused.value.response.status_code == 403


async def test_programs_keep_their_status_codes_and_browsers_get_pages(site: Site) -> None:
    assert (await site.get("/", **{TOKEN_HEADER: "wrong"})).status_code == 401
    forged = site.headers("openUrl")
    forged["Host"] = forged["Host"].replace("-", "-x", 1)
    assert (await site.running.client.get("/", headers=forged)).status_code == 404

    assert (await site.get("/exit")).status_code == 200

    async def not_answering() -> bool:
        return (await site.get("/")).status_code == 502

    await eventually(not_answering, within=20, what="a 502 once the server exited")
    page = await site.get("/", Accept="text/html")
    assert page.status_code == 502 and "not answering" in page.text
    assert page.headers["refresh"] == "3" and "<script" not in page.text.replace(
        '<script src="/__midori/page.js" defer></script>', ""
    )

    assert (await stop(site.running, site.sandbox_id)).status_code == 200
    assert (await site.get("/")).status_code == 404  # programs: as before the gateway
    gone = await site.get("/", Accept="text/html")
    assert gone.status_code == 200 and "This preview was stopped." in gone.text
