"""The wheel built from this repository works on its own: installed into a fresh virtualenv outside
the checkout, `midori-preview migrate` builds the whole schema in a fresh SQLite file (the
migrations ship inside the package), and nothing of the test or benchmark harness ships with it.

Dependencies are pinned to uv.lock (exported as constraints), so the test sees what `uv sync`
installs and reuses the local uv cache; PyPI is only asked for what the cache lacks."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from midori_preview.db.engine import MIGRATIONS, alembic_config

ROOT = Path(__file__).resolve().parents[1]
TABLES = {
    "alembic_version",
    "sandboxes",
    "usage_ledger",
    "idempotency_keys",
    "service_state",
    "github_deliveries",
    "github_previews",
    "pending_deletes",
    "sandbox_sources",
}


def uv() -> str:
    found = ROOT / ".cache" / "uv" / "bin" / "uv"
    if found.exists():
        return str(found)
    on_path = shutil.which("uv")
    if on_path is None:
        pytest.fail("uv is needed to build the wheel: scripts/bootstrap installs it")
    return on_path


def run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{argv[:3]} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def clean_env(tmp_path: Path) -> dict[str, str]:
    """This process's environment minus anything pointing into the checkout or its venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")
        and not k.startswith(("DATABASE_", "DATA_DIR", "REDIS_"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if p and not p.startswith(str(ROOT))
    )
    env["HOME"] = env.get("HOME", str(tmp_path))
    return env


def test_the_wheel_installs_on_its_own_and_migrates_a_fresh_database(tmp_path: Path) -> None:
    env = clean_env(tmp_path)
    dist = tmp_path / "dist"
    run([uv(), "build", "--wheel", "--out-dir", str(dist), str(ROOT)], cwd=tmp_path, env=env)
    (wheel,) = dist.glob("midori_preview-*.whl")

    names = zipfile.ZipFile(wheel).namelist()
    migrations = "midori_preview/db/migrations/"
    shipped = {n.removeprefix(migrations) for n in names if n.startswith(migrations)}
    in_repo = {p.relative_to(MIGRATIONS).as_posix() for p in MIGRATIONS.rglob("*") if p.is_file()}
    in_repo = {p for p in in_repo if "__pycache__" not in p}
    assert in_repo and in_repo <= shipped, in_repo - shipped
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    assert "midori_preview/bench.py" not in names

    constraints = tmp_path / "constraints.txt"
    export = [uv(), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"]
    run([*export, "--project", str(ROOT), "-o", str(constraints)], cwd=tmp_path, env=env)
    venv = tmp_path / "venv"
    base_python = os.path.realpath(sys.executable)  # this venv's interpreter, not the venv
    run([uv(), "venv", "--quiet", "--python", base_python, str(venv)], cwd=tmp_path, env=env)
    python = str(venv / "bin" / "python")
    install = [uv(), "pip", "install", "--quiet", "--python", python, "-c", str(constraints)]
    run([*install, str(wheel)], cwd=tmp_path, env=env, timeout=300)

    where = run(
        [python, "-c", "import midori_preview; print(midori_preview.__file__)"],
        cwd=tmp_path,
        env=env,
    )
    assert where.startswith(str(venv)), where

    database = tmp_path / "data" / "fresh.db"
    env |= {"DATA_DIR": str(tmp_path / "data"), "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    out = run([str(venv / "bin" / "midori-preview"), "migrate"], cwd=tmp_path, env=env)
    assert "database is at head" in out

    with sqlite3.connect(database) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert tables >= TABLES, TABLES - tables
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert version == head
