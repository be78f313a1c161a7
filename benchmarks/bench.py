"""`make bench`: every claim measured side by side with its reference, from the same run, against
a real server process (Postgres + Redis, one uvicorn worker). Prints one Markdown table.

    .venv/bin/python benchmarks/bench.py            # the full run (under 10 minutes)
    .venv/bin/python benchmarks/bench.py --smoke    # seconds: every section, tiny sizes
    .venv/bin/python benchmarks/bench.py --only load --rates 300 --seconds 10  # load rows only

Sections: heartbeat / status / the bare JSON endpoint (`/healthz`) under open-loop load at fixed
rates (h2load); time to preview beside the floor and the original Midori flow; the reaper at
scale with its query plans; the service's memory idle and with live sandboxes. Not part of the
package: a measuring harness beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_daytona
import load
import network
import reaper_scale
from harness import API, REDIS_URL, Server, ok, rss_mb, served
from live_update import live_update_rows
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import previews

Row = list[str]
HEADER = ["measure", "ours", "reference (same run)", "ratio", "target", "met"]


def _met(ok_: bool | None) -> str:
    return "n/a" if ok_ is None else ("yes" if ok_ else "**no**")


async def _live_rows(url: str, n: int) -> list[tuple[str, str]]:
    """`n` running rows (no sandbox behind them: the control plane's state only)."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(reaper_scale.SEED),
            {"tag": "live", "n": n, "age": 1},
        )
        # No provider sandbox behind them: not "lost" to the served reaper's sync either.
        await conn.execute(text("UPDATE sandboxes SET provider_id = NULL WHERE id LIKE 'live%'"))
    await engine.dispose()
    return [(f"liveu{i}", f"live{i}") for i in range(1, n + 1)]


async def _touch(server: Server, live: list[tuple[str, str]]) -> None:
    """One heartbeat and one status for each live row (their beat records loaded)."""
    sem = asyncio.Semaphore(16)

    async def one(user: str, sid: str) -> None:
        async with sem:
            headers = {"X-User-Id": user}
            body = {"sandboxId": sid, "visible": True}
            ok(
                await server.client.post(
                    f"{server.base}{API}/heartbeat", json=body, headers=headers
                ),
                "hb",
            )
            ok(
                await server.client.get(
                    f"{server.base}{API}/status?sandboxId={sid}", headers=headers
                ),
                "status",
            )

    await asyncio.gather(*(one(u, s) for u, s in live))


async def service_rows(
    smoke: bool, load_only: bool = False, plan: tuple[list[float], float] | None = None
) -> list[Row]:
    rows: list[Row] = []
    live_n = 20 if smoke else 200
    rates = [50.0] if smoke else [100.0, 300.0, 1000.0]
    seconds = 1.0 if smoke else 20.0
    if plan is not None:
        rates, seconds = plan
    async with reaper_scale.scratch_database() as url:
        env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL}
        async with served(env) as server:
            await asyncio.sleep(1)
            idle = rss_mb(server.pid)
            live = await _live_rows(url, live_n)
            await _touch(server, live)
            with_live = rss_mb(server.pid)
            per = (with_live - idle) / live_n
            rows.append(
                ["service RSS idle", f"{idle:.0f} MB", "", "", "≤ 150 MB", _met(idle <= 150)]
            )
            rows.append([
                f"RSS per extra live sandbox ({live_n} live, heartbeated + status)",
                f"{per * 1024:.0f} KB", f"{with_live:.0f} MB total", "", "≤ 0.5 MB",
                _met(per <= 0.5),
            ])  # fmt: skip
            rows += await _load_rows(server, live, rates, seconds)
            if load_only:
                return rows
            runs = 1 if smoke else 5
            rows += _preview_rows(await previews.measure(server, runs, vite=not smoke))
            rows += await live_update_rows(server.base, server.client, runs)
    return rows


async def _load_rows(
    server: Server, live: list[tuple[str, str]], rates: list[float], seconds: float
) -> list[Row]:
    if not load.available():
        return [
            [
                "open-loop load",
                "skipped",
                "h2load is not installed (scripts/system-deps)",
                "",
                "",
                "n/a",
            ]
        ]
    rows: list[Row] = []
    spread = live[:20]
    base = server.base
    kinds = {
        "bare /healthz": [load.bare_target(base)],
        "heartbeat (each sandbox in turn)": [load.heartbeat_target(base, u, s) for u, s in spread],
        "heartbeat (duplicates, one sandbox)": [load.heartbeat_target(server.base, *live[0])],
        "status": [load.status_target(server.base, u, s) for u, s in spread],
    }  # fmt: skip
    for rate in rates:
        res = {
            name: await load.open_loop(t, rate, seconds, server.pid) for name, t in kinds.items()
        }
        bare = res["bare /healthz"]
        for name, r in res.items():
            ratio = r.achieved / bare.achieved if bare.achieved else 0.0
            target, met = "", None
            if name != "bare /healthz" and rate == 300:
                target = "≥ 0.5× bare, p99 ≤ 20 ms"
                met = ratio >= 0.5 and r.p99_ms <= 20
            rows.append([
                f"{name} @ {rate:.0f} req/s offered, {seconds:.0f} s",
                f"{r.achieved:.0f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms"
                + (f", {r.errors} errors" if r.errors else "")
                + f"; server CPU {r.cpu_ms:.2f} ms/req",
                "" if name == "bare /healthz" else
                f"bare: {bare.achieved:.0f} req/s, p99 {bare.p99_ms:.1f} ms",
                "" if name == "bare /healthz" else f"{ratio:.2f}×", target, _met(met),
            ])  # fmt: skip
    return rows


def _preview_rows(t: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for kind, floor_key in (
        ("static", "static floor"),
        ("files+server", "files+server floor"),
        ("vite cached", "vite cached floor"),
    ):
        if kind not in t:
            continue
        (ours, p95), (floor, _) = t[kind], t[floor_key]
        needs = kind in ("static", "vite cached")
        sandboxed = t.get(f"{kind} sandboxed")
        reference = f"floor {floor:.0f} ms"
        if sandboxed is not None:
            reference += f"; in a sandbox, no service: {sandboxed[0]:.0f} ms"
        rows.append([
            f"time to preview: {kind} (median, p95 {p95:.0f} ms)", f"{ours:.0f} ms",
            reference, f"ours/floor {ours / floor:.1f}×, +{ours - floor:.0f} ms",
            "≤ floor + 50 ms" if needs else "", _met(ours <= floor + 50 if needs else None),
        ])  # fmt: skip
    if "vite cold" in t:
        rows.append(
            [
                "time to preview: vite cold (npm ci + vite build)",
                f"{t['vite cold'][0]:.0f} ms",
                "",
                "",
                "",
                "n/a",
            ]
        )
    if "original flow" in t and "vite cached" in t:
        seed, cached = t["original flow"][0], t["vite cached"][0]
        warm = t["original flow warm"][0]
        rows.append([
            "original Midori flow (heredoc per file, npm install, build, dev; fresh sandbox: "
            "npm cache empty, median of 3) vs vite cached",
            f"{cached:.0f} ms", f"original {seed:.0f} ms", f"original/ours {seed / cached:.0f}×",
            "≥ 30×", _met(seed / cached >= 30),
        ])  # fmt: skip
        rows.append([
            "original Midori flow at its kindest (npm cache holding every package, median of 2) "
            "vs vite cached",
            f"{cached:.0f} ms", f"original {warm:.0f} ms", f"original/ours {warm / cached:.0f}×",
            "", "n/a",
        ])  # fmt: skip
    return rows


async def reaper_rows(smoke: bool, idle_full: int) -> list[Row]:
    watched, idle = (2_000, 200) if smoke else (100_000, idle_full)
    with tempfile.TemporaryDirectory(prefix="midori-bench-reaper-") as tmp:
        r = await reaper_scale.measure(watched, idle, Path(tmp))
    seq = any("Seq Scan" in p for p in r["plans"])
    return [
        [
            f"reaper: {idle:,} idle reaped beside {watched:,} watched (20 ms per delete)",
            f"{r['reap_s']:.1f} s ({r['reap_s'] * 10_000 / idle:.0f} s per 10,000 at this rate)",
            f"sequential deletes alone: {idle * 0.02:.0f} s",
            f"{r['most_in_flight']} deletes in flight",
            "10,000 in ≤ 15 s" if not smoke else "",
            _met(r["reap_s"] * 10_000 / idle <= 15) if not smoke else "n/a",
        ],
        [
            f"reaper: a pass over {watched:,} live rows, none due (median of 5)",
            f"{r['quiet_ms']:.1f} ms",
            "plans: " + "; ".join(sorted(set(r["plans"]))),
            "no Seq Scan" if not seq else "**Seq Scan**",
            "≤ 50 ms, index",
            _met(r["quiet_ms"] <= 50 and not seq and r["quiet_due"] == 0),
        ],
    ]


async def daytona_rows(smoke: bool) -> list[Row]:
    async with reaper_scale.scratch_database() as url:
        d = await bench_daytona.measure(url, 1 if smoke else 3, {"promptJson": previews.EXAMPLE})
    by_route = ", ".join(f"{route} {n}" for route, n in d["calls"].items())
    return [
        [
            "Daytona emulator, 20 ms per call: static create (median)",
            f"{d['median_ms']:.0f} ms",
            f"{d['total']} provider calls: {by_route}",
            "",
            "≤ 6 calls per static create",
            _met(d["total"] <= 6),
        ],
        [
            "Daytona emulator: provider calls per heartbeat / status",
            f"{d['hot_calls']} calls in {d['hot_requests']} requests",
            "",
            "",
            "0",
            _met(d["hot_calls"] == 0),
        ],
    ]


async def run(
    smoke: bool,
    idle_full: int,
    network_only: bool = False,
    only: str | None = None,
    plan: tuple[list[float], float] | None = None,
) -> list[Row]:
    if only == "load":
        return await service_rows(smoke, load_only=True, plan=plan)
    if network_only:
        return await network.network_rows(1 if smoke else 30)
    rows = await reaper_rows(smoke, idle_full)
    rows += await daytona_rows(smoke)
    rows += await service_rows(smoke)
    rows += await network.network_rows(1 if smoke else 10)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="Seconds: tiny sizes, no vite.")
    parser.add_argument(
        "--reaper-idle",
        type=int,
        default=10_000,
        help="Idle sandboxes the full run reaps beside 100,000 watched (the target's 10,000; "
        "the table gives the time per 10,000 at the measured rate).",
    )
    parser.add_argument(
        "--network",
        action="store_true",
        help="Only the sandbox-network row: a static preview with each sandbox in a network of "
        "its own against the host's network (30 interleaved runs).",
    )
    parser.add_argument(
        "--only",
        choices=["load"],
        help="One section: `load` = the service's memory rows and the open-loop load rows "
        "(heartbeat, status, bare) alone (~5 min less than the full run).",
    )
    parser.add_argument(
        "--rates", help="With --only load: the offered rates, e.g. `300` or `100,300,1000`."
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="With --rates: per rate.")
    args = parser.parse_args(argv)
    plan = ([float(r) for r in args.rates.split(",")], args.seconds) if args.rates else None
    started = time.perf_counter()
    rows = asyncio.run(run(args.smoke, args.reaper_idle, args.network, args.only, plan))
    took = time.perf_counter() - started
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    print(f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    python = platform.python_version()
    load1 = os.getloadavg()[0]
    print(f"- machine: {platform.node()}, {os.cpu_count()} cores ({cpu}), Python {python}")
    print(f"- load average at the end: {load1:.1f} (the machine is shared)")
    print(f"- command: `make bench`{' ARGS=--smoke' if args.smoke else ''}; took {took:.0f} s")
    print()
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
