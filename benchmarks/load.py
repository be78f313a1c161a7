"""Open-loop load at fixed arrival rates with h2load (nghttp2's C load generator, Debian package
`nghttp2-client`; wrk2 is not packaged in Debian, wrk only runs closed-loop). `--rps` paces each
client; many clients with a low rate each keep the offered rate fixed even when answers slow
down (one connection per client over HTTP/1.1). Latencies come from h2load's per-request log."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import API, pct


@dataclass(frozen=True)
class LoadResult:
    offered: float  # req/s asked for
    achieved: float  # 2xx answers per second
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx or failed requests


@dataclass(frozen=True)
class Target:
    """One h2load process: a URI, its headers and (for POST) a body."""

    uri: str
    headers: dict[str, str]
    body: dict[str, object] | None = None


def available() -> bool:
    return shutil.which("h2load") is not None


async def _one(target: Target, rate: float, seconds: float, log: Path) -> int:
    clients = max(1, min(64, int(rate // 5) or 1))
    per_client = rate / clients
    argv = [
        "h2load",
        "--h1",
        f"-c{clients}",
        f"--rps={per_client:.3f}",
        f"-D{max(1, int(seconds))}",
    ]
    argv += ["--log-file", str(log)]
    for name, value in target.headers.items():
        argv += ["-H", f"{name}: {value}"]
    data = None
    if target.body is not None:
        fd, data = tempfile.mkstemp(suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(target.body, f)
        argv += ["-d", data, "-H", "content-type: application/json"]
    argv.append(target.uri)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        return await proc.wait()
    finally:
        if data:
            os.unlink(data)


async def open_loop(targets: list[Target], rate: float, seconds: float) -> LoadResult:
    """`rate` req/s in total, spread evenly over `targets` (one h2load each), for `seconds`."""
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"{i}.log" for i in range(len(targets))]
        await asyncio.gather(
            *(
                _one(t, rate / len(targets), seconds, log)
                for t, log in zip(targets, logs, strict=True)
            )
        )
        lat: list[float] = []
        good = errors = 0
        for log in logs:
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) < 3:
                    continue
                status, micros = int(parts[1]), int(parts[2])
                if 200 <= status < 300:
                    good += 1
                    lat.append(micros / 1000)
                else:
                    errors += 1
    return LoadResult(
        offered=rate,
        achieved=good / seconds,
        p50_ms=pct(lat, 0.5),
        p99_ms=pct(lat, 0.99),
        errors=errors,
    )


def heartbeat_target(base: str, user: str, sandbox_id: str) -> Target:
    return Target(
        f"{base}{API}/heartbeat", {"x-user-id": user}, {"sandboxId": sandbox_id, "visible": True}
    )


def status_target(base: str, user: str, sandbox_id: str) -> Target:
    return Target(f"{base}{API}/status?sandboxId={sandbox_id}", {"x-user-id": user})


def bare_target(base: str) -> Target:
    return Target(f"{base}/healthz", {})
