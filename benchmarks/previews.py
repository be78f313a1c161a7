"""Time to preview: POST → the preview answering 200 through the service's preview host, for
each source kind, beside the *floor* (the same files and server started directly by the
benchmark, no service) and beside *the original Midori flow* on the same site, run by the
benchmark itself: one `bash` heredoc per file, `npm install`, `npm run build`, `npm run dev`."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import signal
import statistics
import tarfile
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from harness import BenchError, Server, create, first_200, free_port, pct, stop, until_running

from midori_preview.bootstrap import build_provider
from midori_preview.clock import SystemClock
from midori_preview.providers.base import FileData, SandboxProvider, SandboxSpec
from midori_preview.providers.local.runner import SANDBOX_PATH
from midori_preview.settings import Settings
from midori_preview.templates import PROMPT_FILE, TemplateBuild, prompt_file_bytes, render_template

EXAMPLE = {
    "name": "บ้านกาแฟ Baan Kafae",
    "tagline": "Slow coffee from the hills of Chiang Rai",
    "language": "th",
    "sections": [{"type": "about", "title": "About us", "body": "A six-seat bar in Nimman."}],
}
SERVER_PY = """import http.server, os
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
FILES = [("index.html", "<h1>hi</h1>"), ("server.py", SERVER_PY)]
FILES_START = "python3 server.py"
FILES_BODY = {"files": [{"path": p, "content": c} for p, c in FILES], "start": FILES_START}


async def time_to_preview(server: Server, body: dict[str, Any], user: str) -> float:
    started = time.perf_counter()
    sandbox_id = await create(server, {"projectId": "site", **body}, user)
    status = await until_running(server, sandbox_id, user)
    await first_200(server, status)
    elapsed = time.perf_counter() - started
    await stop(server, sandbox_id, user)
    return elapsed


async def _answers(
    client: httpx.AsyncClient, port: int, proc: asyncio.subprocess.Process, deadline: float
) -> None:
    while time.perf_counter() < deadline:
        if proc.returncode is not None:
            raise BenchError(f"the floor's server exited with {proc.returncode}")
        try:
            if (await client.get(f"http://127.0.0.1:{port}/")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.005)
    raise BenchError("the floor's server never answered 200")


async def _serve_until_200(
    client: httpx.AsyncClient, directory: Path, command: str, env: dict[str, str] | None = None
) -> None:
    """Start `command` in `directory` on a free $PORT; return once it answers 200; kill it."""
    port = free_port()
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=directory,
        env={**os.environ, **(env or {}), "PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        await _answers(client, port, proc, time.perf_counter() + 120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def _write(directory: Path, files: list[tuple[str, bytes]]) -> None:
    for path, content in files:
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


async def _floor(files: list[tuple[str, bytes]], command: str) -> float:
    """The same files written and the same server started by the benchmark, no service: with
    the sandbox's PATH (the same `python3`), the client made before the clock starts."""
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        with tempfile.TemporaryDirectory(prefix="midori-floor-") as tmp:
            started = time.perf_counter()
            _write(Path(tmp), files)
            await _serve_until_200(client, Path(tmp), command, {"PATH": SANDBOX_PATH})
            return time.perf_counter() - started


async def _sandboxed_floor(
    provider: SandboxProvider, files: list[tuple[str, bytes]], command: str
) -> float:
    """The same files and server in a local sandbox as the service makes one (bubblewrap, its
    own network, pids cgroup), driven directly: no service. Ours minus this is the control
    plane's own time; this minus the floor is what the isolation costs."""
    spec = SandboxSpec(f"floor{secrets.token_hex(4)}", "bench", "floor")
    started = time.perf_counter()
    sandbox = await provider.create(spec, timeout=60)
    try:
        await provider.upload(sandbox, [FileData(path, content) for path, content in files])
        await provider.start_server(sandbox, command, port=3000)
        while not await provider.probe(sandbox, 3000, timeout=2):
            if time.perf_counter() - started > 120:
                raise BenchError("the sandboxed floor's server never answered")
            await asyncio.sleep(provider.probe_interval)
        return time.perf_counter() - started
    finally:
        await provider.delete(sandbox)


def _static_files() -> tuple[list[tuple[str, bytes]], str]:
    build = render_template("static", EXAMPLE)
    return [(f.path, f.content) for f in build.files], build.start


def _cached_vite_files(data_dir: Path) -> tuple[list[tuple[str, bytes]], str]:
    """What a cached vite preview uploads: the kept build output plus its own prompt.json."""
    (archive,) = (data_dir / "cache" / "builds").glob("vite-*.tar.gz")
    files: list[tuple[str, bytes]] = []
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is not None:
                files.append(("dist/" + member.name.removeprefix("./"), extracted.read()))
    files.append(("dist/" + PROMPT_FILE, prompt_file_bytes(EXAMPLE)))
    return files, render_template("vite", EXAMPLE).start


async def original_flow(npm_cache: Path) -> float:
    """The seed's flow on the vite site: a heredoc per file through bash, npm install, npm run
    build, npm run dev; until the dev server answers 200. npm keeps its cache in `npm_cache`:
    an empty one is what the seed's fresh sandbox has."""
    build = render_template("vite", EXAMPLE)
    env = {"npm_config_cache": str(npm_cache)}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        return await _seed_flow(client, build, env)


async def _seed_flow(client: httpx.AsyncClient, build: TemplateBuild, env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory(prefix="midori-seed-") as tmp:
        site = Path(tmp)
        started = time.perf_counter()
        for f in build.files:
            path = shlex.quote(f.path)
            script = (
                f"mkdir -p \"$(dirname {path})\" && cat > {path} <<'MIDORI_EOF'\n"
                f"{f.content.decode()}\nMIDORI_EOF"
            )
            await _sh(site, script)
        await _sh(site, "npm install --no-audit --no-fund", env)
        await _sh(site, "npm run build", env)
        await _serve_until_200(
            client, site, 'npm run dev -- --port "$PORT" --strictPort --host 127.0.0.1', env=env
        )
        return time.perf_counter() - started


async def original_flows(cold_runs: int, warm_runs: int) -> tuple[list[float], list[float]]:
    """The seed's flow as it really runs (each in a fresh sandbox: npm's cache empty, every
    package from the registry) and at its kindest (npm's cache already holding every package)."""
    with tempfile.TemporaryDirectory(prefix="midori-npm-") as tmp:
        kept = Path(tmp) / "kept"
        cold = [await original_flow(kept)]  # fills the kept cache for the warm runs
        for i in range(cold_runs - 1):
            cold.append(await original_flow(Path(tmp) / f"fresh{i}"))
        warm = [await original_flow(kept) for _ in range(warm_runs)]
    return cold, warm


async def _sh(cwd: Path, script: str, env: dict[str, str] | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=cwd, env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"{script.splitlines()[0]!r} failed: {err.decode()[-300:]}")


async def _times(runs: int, one: Callable[[int], Awaitable[float]]) -> list[float]:
    return [await one(i) for i in range(runs)]


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.median(values) * 1000, pct(values, 0.95) * 1000


async def measure(server: Server, runs: int, *, vite: bool) -> dict[str, Any]:
    """(median, p95) ms of ours, the floor and the sandboxed floor per source kind; the seed
    flow (with `vite`)."""
    settings = Settings(data_dir=server.data_dir / "floor", _env_file=None)  # type: ignore[call-arg]
    provider = build_provider(settings, SystemClock())
    try:
        return await _measure(server, runs, vite=vite, provider=provider)
    finally:
        await provider.aclose()


async def _measure(
    server: Server, runs: int, *, vite: bool, provider: SandboxProvider
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    static_body = {"promptJson": EXAMPLE}
    vite_body = {"promptJson": EXAMPLE, "template": "vite"}
    out["static"] = _ms(
        await _times(runs, lambda i: time_to_preview(server, static_body, f"st{i}"))
    )
    files, cmd = _static_files()
    out["static floor"] = _ms(await _times(runs, lambda i: _floor(files, cmd)))
    out["static sandboxed"] = _ms(
        await _times(runs, lambda i: _sandboxed_floor(provider, files, cmd))
    )
    out["files+server"] = _ms(
        await _times(runs, lambda i: time_to_preview(server, FILES_BODY, f"fs{i}"))
    )
    plain = [(path, content.encode()) for path, content in FILES]
    out["files+server floor"] = _ms(await _times(runs, lambda i: _floor(plain, FILES_START)))
    if not vite:
        return out
    out["vite cold"] = _ms(
        [await time_to_preview(server, {**vite_body, "projectId": "cold"}, "vc")]
    )
    out["vite cached"] = _ms(
        await _times(runs, lambda i: time_to_preview(server, vite_body, f"vw{i}"))
    )
    files, cmd = _cached_vite_files(server.data_dir)
    out["vite cached floor"] = _ms(await _times(runs, lambda i: _floor(files, cmd)))
    out["vite cached sandboxed"] = _ms(
        await _times(runs, lambda i: _sandboxed_floor(provider, files, cmd))
    )
    cold, warm = await original_flows(3, 2)
    out["original flow"] = _ms(cold)
    out["original flow warm"] = _ms(warm)
    return out
