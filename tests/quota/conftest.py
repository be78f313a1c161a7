"""Fixtures of the quota tests."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

from midori_preview.kv import make_redis
from midori_preview.quota.service import QuotaService
from tests.conftest import Backend


@pytest.fixture
async def quota(backend: Backend) -> AsyncIterator[QuotaService]:
    """A QuotaService on its own key prefix: real Redis (pg) or the in-process store (embedded)."""
    client = make_redis(backend.redis_url)
    prefix = f"mp:q{secrets.token_hex(4)}"
    try:
        yield QuotaService(client, prefix=prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
