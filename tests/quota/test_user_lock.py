"""The per-user admission lock: one holder at a time across replicas (two QuotaServices on one
Redis), waiters of one process queue in-process instead of polling Redis, the wait is bounded."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import pytest

from midori_preview.errors import QuotaUnavailable
from midori_preview.kv import make_redis
from midori_preview.quota.service import QuotaService
from tests.conftest import REDIS_URL


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[QuotaService, QuotaService]]:
    prefix = f"mp:t{secrets.token_hex(4)}"
    a, b = make_redis(REDIS_URL), make_redis(REDIS_URL)
    yield QuotaService(a, prefix=prefix), QuotaService(b, prefix=prefix)
    await a.aclose()
    await b.aclose()


async def test_one_holder_at_a_time_across_replicas(
    replicas: tuple[QuotaService, QuotaService],
) -> None:
    holding = 0
    most = 0
    order: list[int] = []

    async def admit(quota: QuotaService, n: int) -> None:
        nonlocal holding, most
        async with quota.user_lock("alice", wait=30):
            holding += 1
            most = max(most, holding)
            await asyncio.sleep(0)  # give any other holder the chance to show up
            order.append(n)
            holding -= 1

    await asyncio.gather(*(admit(replicas[n % 2], n) for n in range(40)))
    assert most == 1
    assert sorted(order) == list(range(40))
    assert replicas[0]._local == {} and replicas[1]._local == {}  # nothing kept per user


async def test_a_waiter_gives_up_after_its_wait(
    replicas: tuple[QuotaService, QuotaService],
) -> None:
    quota = replicas[0]
    async with quota.user_lock("bob"):
        with pytest.raises(QuotaUnavailable):  # queued in this process behind the holder
            async with quota.user_lock("bob", wait=0.2):
                pass
        with pytest.raises(QuotaUnavailable):  # another replica, waiting on Redis
            async with replicas[1].user_lock("bob", wait=0.2):
                pass
    async with replicas[1].user_lock("bob", wait=5):  # free again once released
        pass
    assert quota._local == {}
