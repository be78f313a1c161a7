"""Local sandboxes' own network (bubblewrap + pasta) against the host's network: time to a
static preview on two servers side by side, runs interleaved so the machine's load moves both
alike. Target: isolated within 10 % of host."""

from __future__ import annotations

import statistics

from harness import Server, ok, pct, served

import previews

Row = list[str]
MODES = ("isolated", "host")


async def _problem(servers: dict[str, Server]) -> str | None:
    """Why this host cannot compare (no bubblewrap or pasta: no sandbox networks), or None."""
    for mode, server in servers.items():
        ready = ok(await server.client.get(f"{server.base}/readyz"), "readyz").json()
        isolation = ready["sandboxIsolation"]
        if isolation["network"] != (mode == "isolated"):
            return str(isolation.get("problem") or f"{mode}: /readyz says {isolation}")
    return None


async def network_rows(runs: int) -> list[Row]:
    async with (
        served({"LOCAL_SANDBOX_NETWORK": "isolated"}) as isolated,
        served({"LOCAL_SANDBOX_NETWORK": "host"}) as host,
    ):
        servers = {"isolated": isolated, "host": host}
        problem = await _problem(servers)
        if problem is not None:
            return [["static preview, sandbox in its own network", "not measured", problem,
                     "", "≤ 1.10×", "n/a"]]  # fmt: skip
        rows: list[Row] = []
        body = {"promptJson": previews.EXAMPLE}
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(runs):
            for mode in MODES if i % 2 == 0 else tuple(reversed(MODES)):
                elapsed = await previews.time_to_preview(servers[mode], body, f"n{i}")
                times[mode].append(elapsed)
        medians = {mode: statistics.median(times[mode]) * 1000 for mode in MODES}
        ratio = medians["isolated"] / medians["host"]
        rows.append([
            f"static preview, sandbox in its own network ({runs} runs, interleaved)",
            f"{medians['isolated']:.0f} ms (p95 {pct(times['isolated'], 0.95) * 1000:.0f})",
            f"host network {medians['host']:.0f} ms (p95 {pct(times['host'], 0.95) * 1000:.0f})",
            f"{ratio:.2f}×", "≤ 1.10×", "yes" if ratio <= 1.10 else "**no**",
        ])  # fmt: skip
        return rows
