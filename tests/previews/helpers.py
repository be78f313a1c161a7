"""Shared helpers for the preview spine tests: create, wait, fetch through the preview proxy,
and look at what a sandbox leaves on this host (workspace, processes, ports)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from midori_preview.app import create_app
from midori_preview.settings import Settings
from tests.conftest import Running, user_headers
from tests.support.servers import drop_redis_keys, free_port, uvicorn_serving

API = "/api/preview/daytona"
TOKEN_HEADER = "x-daytona-preview-token"
CAFE_JSON = (
    Path(__file__).resolve().parents[2] / "src/midori_preview/web/static/examples/test-cafe.json"
)
CAFE_NAME = "บ้านกาแฟ Baan Kafae"


def make_png() -> bytes:
    """A real 16x16 PNG whose pixels cover every byte value (NUL, CR, LF, 0x80-0xff): bytes that
    any text round trip (UTF-8 decode, newline translation) would mangle."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + bytes(range(y * 16, y * 16 + 16)) for y in range(16))
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 0))
        + chunk(b"IEND", b"")
    )


def cafe_prompt() -> dict[str, Any]:
    return dict(json.loads(CAFE_JSON.read_text(encoding="utf-8")))


async def create(
    running: Running,
    body: dict[str, Any],
    *,
    user: str = "alice",
    key: str | None = None,
) -> httpx.Response:
    headers = user_headers(user)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await running.client.post(API, json=body, headers=headers)


async def create_running(
    running: Running, body: dict[str, Any], *, user: str = "alice"
) -> dict[str, Any]:
    """POST a preview and wait for its build: the status body of a `running` sandbox."""
    res = await create(running, body, user=user)
    assert res.status_code == 202, res.text
    sandbox_id = res.json()["sandboxId"]
    status = await running.wait_until(sandbox_id, user=user)
    assert status["status"] == "running", status
    return status


async def stop(running: Running, sandbox_id: str, *, user: str = "alice") -> httpx.Response:
    return await running.client.post(
        f"{API}/stop", json={"sandboxId": sandbox_id}, headers=user_headers(user)
    )


async def fetch_preview(
    running: Running, status: dict[str, Any], path: str = "/", *, token: str | None = None
) -> httpx.Response:
    """GET `path` of a running preview through the service's preview proxy, with its token."""
    return await get_preview(
        running, status["previewUrl"], path, {TOKEN_HEADER: token or status["previewToken"]}
    )


async def get_preview(
    running: Running, url: str, path: str = "/", headers: dict[str, str] | None = None
) -> httpx.Response:
    """GET a preview URL (`http://{label}.preview.localhost:{port}/`) from the service itself:
    the request goes to the client's base URL and names the preview host in `Host`, the way a
    browser resolving `*.localhost` to this machine would send it."""
    host = urlsplit(url).netloc
    return await running.client.get(path, headers={"Host": host, **(headers or {})})


def files_body(project: str, files: dict[str, str | bytes], **extra: Any) -> dict[str, Any]:
    """A `files` create body; bytes go as base64."""
    out: list[dict[str, str]] = []
    for path, content in files.items():
        if isinstance(content, bytes):
            out.append(
                {"path": path, "content": base64.b64encode(content).decode(), "encoding": "base64"}
            )
        else:
            out.append({"path": path, "content": content})
    return {"projectId": project, "files": out, **extra}


def workspace_of(running: Running, sandbox_id: str) -> Path:
    return running.settings.data_dir / "sandboxes" / sandbox_id


def host_port(running: Running, sandbox_id: str, port: int = 3000) -> int:
    found = running.services.provider.host_port(sandbox_id, port)
    assert found is not None, f"no host port for {sandbox_id}:{port}"
    return int(found)


def pids_with_cwd(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (by inode, so that it also finds processes
    inside a bubblewrap mount namespace, where the same directory is called /workspace)."""
    st = directory.stat()
    return pids_with_cwd_inode(st.st_dev, st.st_ino)


def pids_with_cwd_inode(dev: int, ino: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (dev, ino):
            found.append(int(entry))
    return found


def port_answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def git(cwd: Path, *args: str) -> str:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout.strip()


def not_found_body(res: httpx.Response, sandbox_id: str) -> dict[str, Any]:
    """A 404 body with the sandbox id masked, to compare two 404s for different ids."""
    assert res.status_code == 404, res.text
    return dict(json.loads(res.text.replace(sandbox_id, "<id>")))


def pids_with_marker(marker: str) -> list[int]:
    """Processes whose command line contains `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found


async def settles(check: Callable[[], bool], within: float = 2.0) -> bool:
    """Whether `check()` holds within `within` real seconds (for kernel-side teardown only)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def group_alive(pgid: int) -> bool:
    """A process of group `pgid` still runs (zombies waiting for a slow init do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        state, _ppid, pgrp = raw[raw.rfind(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            return True
    return False


@dataclass
class SSE:
    event: str
    data: Any
    id: str | None


async def read_sse(lines: AsyncIterator[str]) -> AsyncIterator[SSE]:
    """Server-Sent Events from a line iterator (comments such as pings are skipped)."""
    event, data, ident = "message", [], None
    async for line in lines:
        if line == "":
            if data:
                yield SSE(event, json.loads("\n".join(data)), ident)
            event, data, ident = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                ident = value
    if data:
        yield SSE(event, json.loads("\n".join(data)), ident)


def statuses(events: list[SSE]) -> list[str]:
    return [e.data["status"] for e in events if e.event == "status"]


@asynccontextmanager
async def served_app(settings: Settings) -> AsyncIterator[Running]:
    """The app behind a real uvicorn server on a free port (streams are delivered as they are
    written, unlike over ASGITransport), with an httpx client pointed at it."""
    port = free_port()
    app = create_app(settings)
    try:
        async with (
            uvicorn_serving(app, port),
            httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=30
            ) as client,
        ):
            yield Running(app, client, settings)
    finally:
        await drop_redis_keys(settings)


async def read_events(running: Running, sandbox_id: str, **headers: str) -> list[SSE]:
    async with (
        asyncio.timeout(20),
        running.client.stream(
            "GET",
            f"{API}/events",
            params={"sandboxId": sandbox_id},
            headers={**user_headers(), **headers},
        ) as res,
    ):
        assert res.status_code == 200
        assert res.headers["content-type"].startswith("text/event-stream")
        return [e async for e in read_sse(res.aiter_lines())]
