"""The create queue: a user already at the limit is refused at once, without waiting for the
user's lock; the user's lock is kept while its holder works, however slowed (a create storm's
other replicas are never let in beside it); a burst of one user's creates queued behind the lock
is answered after it — each 202 or 409, none refused as busy. (At scale:
tests/reliability/test_create_storm.py.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from midori_preview.errors import QuotaUnavailable
from midori_preview.quota.service import QuotaService
from tests.conftest import Backend, make_settings, running_app
from tests.quota.helpers import create, create_running
from tests.support.clock import ManualClock
from tests.support.waiting import eventually


async def test_the_user_lock_is_kept_while_held_past_its_timeout(quota: QuotaService) -> None:
    other = QuotaService(quota.redis, prefix=quota.prefix)  # another replica
    async with quota.user_lock("u", timeout=0.3, wait=1):
        # The holder outlives the lock's 0.3 s TTL five times over: renewed, it is still held.
        with pytest.raises(QuotaUnavailable):
            async with other.user_lock("u", timeout=0.3, wait=1.5):
                pytest.fail("another replica entered the lock while it was held")
    async with other.user_lock("u", timeout=0.3, wait=1):  # released: free at once
        pass


async def test_a_create_over_the_limit_is_refused_at_once_while_the_users_lock_is_busy(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, backend), clock=clock) as app:
        first = await create_running(app, "one")
        # Another replica is admitting one of alice's creates: a create that the committed
        # state already refuses does not queue behind it.
        async with app.services.quota.user_lock("alice"):
            res = await asyncio.wait_for(create(app, "two"), timeout=10)
        assert res.status_code == 409, res.text
        assert res.json()["error"]["code"] == "concurrency_limit"
        assert res.json()["error"]["activeSandboxIds"] == [first]
        await app.service.wait_idle()


async def test_a_burst_queued_behind_the_users_lock_is_answered_after_it(
    tmp_path: Path, backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(tmp_path, backend, max_concurrent_sandboxes_per_user=2)
    async with running_app(settings, clock=clock) as app:
        async with app.services.quota.user_lock("alice"):  # another replica is admitting
            burst = [
                asyncio.ensure_future(create(app, f"p{i}", content=f"<p>{i}</p>")) for i in range(6)
            ] + [asyncio.ensure_future(create(app, "p0", content="<p>0</p>"))]
            queue = app.service.admission.bursts
            await eventually(lambda: queue.waiting("alice") == 7, what="7 creates queued")
            assert not any(f.done() for f in burst), "answered while the lock was held"
        answers = await asyncio.gather(*burst)
        codes = Counter(r.status_code for r in answers)
        # Two new previews, the same source again is the first one's (200 or, had it come
        # first, its 202), the rest at the limit: nobody is told to come back later.
        assert set(codes) <= {200, 202, 409}, codes
        assert codes[202] == 2, codes
        assert len({r.json()["sandboxId"] for r in answers if r.status_code < 300}) == 2
        await app.service.wait_idle()
