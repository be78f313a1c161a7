"""Open-loop load at fixed arrival rates with h2load (nghttp2's C load generator, Debian package
`nghttp2-client`; wrk2 is not packaged in Debian, wrk only runs closed-loop). `--rps` paces each
client; many clients with a low rate each keep the offered rate fixed even when answers slow
down (one connection per client over HTTP/1.1). Latencies come from h2load's per-request log.
The clients of one h2load process fire together, so a rate is split over staggered processes
(`jobs`) to arrive spread out, as independent browsers' requests do."""

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
    cpu_ms: float = float("nan")  # the server's CPU time per answered request (user + system)


@dataclass(frozen=True)
class Target:
    """One h2load process: a URI, its headers and (for POST) a body."""

    uri: str
    headers: dict[str, str]
    body: dict[str, object] | None = None


def available() -> bool:
    return shutil.which("h2load") is not None


PER_CLIENT = 5.0  # req/s each h2load client sends (one HTTP/1.1 connection each)
PROCESSES = 12  # h2load processes a rate is split over, started staggered


@dataclass(frozen=True)
class Job:
    """One h2load process: `clients` connections of `target`, each at `rps`, started `delay`
    seconds after the first."""

    target: Target
    clients: int
    rps: float
    delay: float


def jobs(targets: list[Target], rate: float, *, stagger: bool = True) -> list[Job]:
    """The h2load processes that offer `rate` req/s over `targets`. The clients of one h2load
    process send in lockstep (each connects at once and fires on its own `--rps` timer): 60
    clients at 5 req/s are a burst of 60 requests every 200 ms, not 300 req/s. Staggered, the
    clients are split over about PROCESSES processes whose starts are spread evenly over one
    period, so arrivals come in small bursts all through it (`stagger=False`: one process per
    target, started together, as before)."""
    per_target = rate / len(targets)
    clients = max(1, min(64, int(per_target // PER_CLIENT) or 1))
    rps = per_target / clients
    parts = min(clients, max(1, -(-PROCESSES // len(targets)))) if stagger else 1
    split = [(t, clients // parts + (i < clients % parts)) for t in targets for i in range(parts)]
    period = 1 / rps
    return [
        Job(t, n, rps, (j * period / len(split)) if stagger else 0.0)
        for j, (t, n) in enumerate(split)
    ]


async def _one(job: Job, seconds: float, log: Path) -> int:
    await asyncio.sleep(job.delay)
    target = job.target
    argv = [
        "h2load",
        "--h1",
        f"-c{job.clients}",
        f"--rps={job.rps:.3f}",
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


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far (user + system, /proc/<pid>/stat): per request, a measure
    that other load on a shared machine moves much less than latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def open_loop(
    targets: list[Target],
    rate: float,
    seconds: float,
    pid: int | None = None,
    *,
    stagger: bool = True,
) -> LoadResult:
    """`rate` req/s in total, spread evenly over `targets` (see `jobs`), for `seconds`; with
    the server's `pid`, its CPU time per answered request too."""
    planned = jobs(targets, rate, stagger=stagger)
    with tempfile.TemporaryDirectory() as tmp:
        logs = [Path(tmp) / f"{i}.log" for i in range(len(planned))]
        cpu_before = cpu_seconds(pid) if pid is not None else 0.0
        await asyncio.gather(
            *(_one(job, seconds, log) for job, log in zip(planned, logs, strict=True))
        )
        cpu = cpu_seconds(pid) - cpu_before if pid is not None else float("nan")
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
        cpu_ms=cpu * 1000 / (good + errors) if good + errors else float("nan"),
    )


def heartbeat_target(base: str, user: str, sandbox_id: str) -> Target:
    return Target(
        f"{base}{API}/heartbeat", {"x-user-id": user}, {"sandboxId": sandbox_id, "visible": True}
    )


def status_target(base: str, user: str, sandbox_id: str) -> Target:
    return Target(f"{base}{API}/status?sandboxId={sandbox_id}", {"x-user-id": user})


def bare_target(base: str) -> Target:
    return Target(f"{base}/healthz", {})
