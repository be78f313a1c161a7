"""A Postgres server of a test's own (initdb + pg_ctl as the `postgres` user), so that a test may
stop it and start it again — an outage — without touching the Postgres other tests share."""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.servers import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> str | None:
    """Why a private Postgres cannot run here, or None when it can."""
    if _bin("initdb") is None or _bin("pg_ctl") is None:
        return "initdb/pg_ctl not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


class PrivatePostgres:
    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: the server's user must be able to reach its directory.
        self.root = Path(tempfile.mkdtemp(prefix="mp-pg-"))
        self.data = self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *argv], check=True, capture_output=True, timeout=120)

    async def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        initdb = _bin("initdb")
        assert initdb is not None
        await asyncio.to_thread(
            self._run, initdb, "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8"
        )
        await self.start()

    async def start(self) -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        await asyncio.to_thread(
            self._run, pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    async def stop(self, mode: str = "fast") -> None:
        pg_ctl = _bin("pg_ctl")
        assert pg_ctl is not None
        await asyncio.to_thread(
            self._run, pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )

    async def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running
            await self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
