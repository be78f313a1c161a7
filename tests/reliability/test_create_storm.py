"""Many users each firing concurrent creates at several replicas sharing Postgres and Redis, with
a limit of 2 live previews per user: sampled continuously, no user ever has more than 2 live rows
(or slots); every create is answered 202 or 409 (never 5xx), the 202s are exactly the sandboxes
made; after every preview stops no slot is left in Redis.

Scale: MP_STORM_USERS (default 6; the full run 50), MP_STORM_CREATES (default 5; full 10),
MP_STORM_REPLICAS (default 3)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

from tests.conftest import Backend, make_settings
from tests.quota.helpers import create, replicas, stop
from tests.support.clock import ManualClock
from tests.support.waiting import builds_settle

USERS = int(os.environ.get("MP_STORM_USERS", "6"))
CREATES = int(os.environ.get("MP_STORM_CREATES", "5"))
REPLICAS = int(os.environ.get("MP_STORM_REPLICAS", "3"))
LIMIT = 2


async def test_never_more_than_the_limit_live(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    settings = make_settings(
        tmp_path, pg_backend, max_concurrent_sandboxes_per_user=LIMIT,
        create_rate_per_minute=10_000,
    )  # fmt: skip
    users = [f"u{i}" for i in range(USERS)]
    async with replicas(settings, clock, n=REPLICAS) as apps:
        repo, quota = apps[0].services.db.sandboxes, apps[0].services.quota
        most: Counter[str] = Counter()
        samples = 0
        storming = asyncio.Event()

        async def sample(u: str) -> None:  # one sampler per user, all along the storm
            nonlocal samples
            while not storming.is_set():
                live = len(await repo.live_for_user(u))
                slots = len(await quota.slot_holders(u))
                most[u] = max(most[u], live, slots)
                samples += 1
                await asyncio.sleep(0)

        sampler = asyncio.gather(*(sample(u) for u in users))
        answers = await asyncio.gather(*(
            create(apps[(i + j) % REPLICAS], f"p{j}", user=u, content=f"{u}-{j}")
            for i, u in enumerate(users) for j in range(CREATES)
        ))  # fmt: skip
        for app in apps:
            await builds_settle(app.service)
        storming.set()
        await sampler
        codes = Counter(
            f"{r.status_code} {r.json()['error']['code']}"
            if r.status_code >= 400
            else r.status_code
            for r in answers
        )
        # Full scale on one loaded machine (one event loop for every replica, a Postgres shared
        # with other work), a create may wait past the admission lock's 15 s (503
        # quota_unavailable) or find the server out of connections (503 database_unavailable):
        # retryable, nothing taken. Counted; never in the suite's small run.
        busy = [k for k in codes if isinstance(k, str) and k.startswith("503 ")]
        waited = sum(codes.pop(k) for k in busy)
        assert set(codes) <= {202, "409 concurrency_limit"}, codes
        assert waited == 0 or USERS * CREATES >= 200, waited
        made = {r.json()["sandboxId"] for r in answers if r.status_code == 202}
        assert {r.id for r in await repo.active_rows(limit=10_000)} == made  # each row a 202
        assert len(made) == codes[202]
        assert max(most.values()) <= LIMIT, most
        assert samples > 0
        askers = [u for u in users for _ in range(CREATES)]
        per_user = Counter(u for r, u in zip(answers, askers, strict=True) if r.status_code == 202)
        refused = {u for r, u in zip(answers, askers, strict=True) if r.status_code == 503}
        failed = Counter(r.user_id for r in await repo.active_rows(limit=10_000)
                         if r.status == "error")  # fmt: skip
        # Each user got its 2 (or fewer if refused as busy) — plus one more for each of its
        # builds that failed (the failure frees the slot), never more.
        off = {u: n for u, n in per_user.items()
               if n > LIMIT + failed[u] or (n < LIMIT and u not in refused)}  # fmt: skip
        assert off == {}, (off, failed)

        for u in users:
            for row in await repo.live_for_user(u):
                assert (await stop(apps[0], row.id, user=u)).status_code == 200
        for u in users:
            assert await repo.live_for_user(u) == []
            assert await quota.slot_holders(u) == [], u  # no slot leaked
        print(f"\n{USERS} users x {CREATES} concurrent creates on {REPLICAS} replicas: "
              f"{dict(codes)}, 503 (busy) {waited} {busy}, "
              f"most live at once {max(most.values())}, "
              f"{samples} samples")  # fmt: skip
