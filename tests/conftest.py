"""Shared fixtures: real Postgres + real Redis, and the embedded SQLite + in-process store.

Postgres gets one fresh database per test session, built by `alembic upgrade head`; tables are
truncated between tests. Redis keys are namespaced per test (PREVIEW_DEPLOYMENT) and removed."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from midori_preview.app import create_app
from midori_preview.bootstrap import Services
from midori_preview.db.engine import make_engine, upgrade_head
from midori_preview.previews.service import PreviewService
from midori_preview.settings import Settings
from tests.support.clock import ManualClock
from tests.support.servers import drop_redis_keys
from tests.support.waiting import builds_settle

os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TABLES = ("sandboxes", "usage_ledger", "idempotency_keys", "service_state")


def _psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-q", "-c", sql], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"mp_test_{os.getpid()}_{secrets.token_hex(3)}"
    _psql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + "/" + name
    upgrade_head(url)
    try:
        yield url
    finally:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _truncate(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:
        names = await conn.run_sync(lambda c: c.dialect.get_table_names(c))
        wanted = [t for t in names if t != "alembic_version"]
        await conn.execute(text(f"TRUNCATE {', '.join(wanted)}"))
    await engine.dispose()


@dataclass
class Backend:
    name: str  # "pg" (Postgres + Redis) or "embedded" (SQLite + in-process store)
    database_url: str | None
    redis_url: str | None


@pytest.fixture(params=["pg", "embedded"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "pg":
        url = request.getfixturevalue("pg_url")
        asyncio.run(_truncate(url))
        yield Backend("pg", url, REDIS_URL)
    else:
        yield Backend("embedded", None, None)


@pytest.fixture
def pg_backend(pg_url: str) -> Backend:
    asyncio.run(_truncate(pg_url))
    return Backend("pg", pg_url, REDIS_URL)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def make_settings(tmp_path: Path, backend: Backend, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": backend.database_url,
        "redis_url": backend.redis_url,
        "preview_deployment": f"t{secrets.token_hex(4)}",
        "reaper_enabled": False,
        "git_allowed_url_prefixes": ["https://github.com/", f"file://{tmp_path}/"],
        "log_level": "WARNING",
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Running:
    app: Any
    client: httpx.AsyncClient
    settings: Settings

    @property
    def services(self) -> Services:
        """The app's container of long-lived services (built by its lifespan)."""
        services: Services = self.app.state.services
        return services

    @property
    def service(self) -> PreviewService:
        return self.services.previews

    async def wait_until(
        self, sandbox_id: str, *statuses: str, user: str = "alice"
    ) -> dict[str, Any]:
        """Wait for the build to settle (no sleeping on the service clock)."""
        await builds_settle(self.service)
        res = await self.client.get(
            f"/api/preview/daytona/status?sandboxId={sandbox_id}", headers=user_headers(user)
        )
        body = res.json()
        if statuses:
            assert body["status"] in statuses, body
        return dict(body)


def user_headers(user: str = "alice", *, admin: bool = False) -> dict[str, str]:
    headers = {"X-User-Id": user}
    if admin:
        headers["X-User-Role"] = "admin"
    return headers


@asynccontextmanager
async def running_app(settings: Settings, **kwargs: Any) -> AsyncIterator[Running]:
    app = create_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url=f"http://localhost:{settings.port}"
        ) as client:
            try:
                yield Running(app, client, settings)
            finally:
                await app.state.services.previews.shutdown()
    await drop_redis_keys(settings)


@pytest.fixture
async def service_app(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> AsyncIterator[Running]:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as running:
        yield running
