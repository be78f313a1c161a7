"""`make bench` cannot rot: its smoke run (every section at tiny sizes: the reaper beside watched
rows with its query plans, the Daytona emulator's calls per create and per heartbeat, memory,
open-loop load, time to preview beside the floor) runs here
against real Postgres and Redis and must print a full table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_smoke_run_prints_every_section() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--smoke"],
        cwd=ROOT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    text = "\n".join(rows)
    for section in (
        "reaper: 200 idle reaped",
        "none due",
        "service RSS idle",
        "RSS per extra live sandbox",
        "time to preview: static",
        "time to preview: files+server",
        "Daytona emulator, 20 ms per call: static create",
    ):
        assert section in text, f"{section!r} missing from:\n{out.stdout}"
    quiet = next(row for row in rows if "none due" in row)
    assert "| no Seq Scan |" in quiet, f"a reaper query scans: {quiet}"
    hot = next(row for row in rows if "provider calls per heartbeat / status" in row)
    assert hot.startswith("| Daytona emulator: provider calls per heartbeat / status | 0 calls")
    assert ("heartbeat (each sandbox in turn)" in text) or ("h2load is not installed" in text)
