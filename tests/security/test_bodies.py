"""Bodies that would cost memory or hold a worker are refused early, on a real uvicorn server:
a chunked body past the limit is a 413 once the limit is crossed (the client is stopped long
before it sent everything), a declared one at once; a slow drip is a 408 after
REQUEST_BODY_TIMEOUT_SECONDS; deep JSON is a 422, too many files a 413."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from midori_preview.app import create_app
from tests.conftest import Backend, make_settings, user_headers
from tests.support.clock import ManualClock
from tests.support.servers import drop_redis_keys, free_port, uvicorn_serving

API = "/api/preview/daytona"
MAX = 64 * 1024  # MAX_REQUEST_BYTES here; the server refuses past MAX + 1 MiB
CHUNK = 64 * 1024
OFFERED = 64 * 1024 * 1024  # what the client would send if nobody stopped it


async def test_oversized_slow_deep_and_crowded_bodies(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path, pg_backend, max_request_bytes=MAX, max_files=50, request_body_timeout_seconds=1.5
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {**user_headers("alice"), "content-type": "application/json"}
    try:
        async with (
            uvicorn_serving(create_app(settings, clock=clock), port),
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            sent = 0

            async def endless() -> AsyncIterator[bytes]:  # chunked: no length declared
                nonlocal sent
                yield b'{"projectId": "p", "files": [{"path": "a", "content": "'
                while sent < OFFERED:
                    sent += CHUNK
                    yield b"x" * CHUNK

            try:
                res = await client.post(API, content=endless(), headers=headers)
                status, code = res.status_code, res.json()["error"]["code"]
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                status, code = 413, "connection closed while sending"  # refused mid-upload
            assert status == 413, code
            assert sent < OFFERED // 4, f"the server read {sent} bytes of a refused body"

            declared = await client.post(
                API, content=b"x" * (MAX + 2 * 1024 * 1024), headers=headers
            )
            assert (declared.status_code, declared.json()["error"]["code"]) == (
                413, "payload_too_large",
            )  # fmt: skip

            deep = "[" * 20_000 + "]" * 20_000  # under the size limit, far past any sane depth
            res = await client.post(API, content=f'{{"projectId": "p", "files": {deep}}}',
                                    headers=headers)  # fmt: skip
            assert (res.status_code, res.json()["error"]["code"]) == (422, "validation_error")

            files = [{"path": f"f{i}.txt", "content": "x"} for i in range(51)]  # MAX_FILES 50
            res = await client.post(API, json={"projectId": "p", "files": files},
                                    headers=user_headers("alice"))  # fmt: skip
            assert (res.status_code, res.json()["error"]["code"]) == (413, "payload_too_large")

            # A slow drip: 200 bytes declared, one byte every 0.1 s — never finished in time.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            head = (f"POST {API} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-User-Id: alice\r\n"
                    "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n")  # fmt: skip
            writer.write(head.encode())
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = asyncio.ensure_future(reader.read(4096))
            while not answer.done() and loop.time() - started < 20:
                writer.write(b" ")
                await writer.drain()
                await asyncio.wait({answer}, timeout=0.1)  # the drip's pace
            raw = (await asyncio.wait_for(answer, 10)).decode("latin-1")
            writer.close()
            assert raw.startswith("HTTP/1.1 408"), raw
            assert '"request_timeout"' in raw
            assert loop.time() - started < 10
            # The service is fine afterwards.
            res = await client.post(API, json={"projectId": "p", "files": files[:1]},
                                    headers=user_headers("alice"))  # fmt: skip
            assert res.status_code == 202, res.text
    finally:
        await drop_redis_keys(settings)
