"""Usage exactness over many simulated hours on the injected clock, across replicas sharing one
Postgres and one Redis: viewers heartbeat on a jittered schedule, some heartbeats sent twice at
once to both replicas (duplicated and racing), some lost, tabs hidden and shown (the browser
sends a heartbeat on each change, as the JS client does), then stopped. Each user's charged
seconds per day are within one heartbeat interval of the time they really watched, never above
the daily cap, and the ledger equals the sum of the charges (the metrics' counter).

Scale: MP_SIM_USERS (default 4), MP_SIM_HOURS (default 3), MP_SIM_REPLICAS (default 2),
MP_SIM_SEED."""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import REGISTRY

from tests.conftest import Backend, make_settings
from tests.quota.helpers import create_running, heartbeat, ledger, mirror, replicas, stop
from tests.support.clock import ManualClock

USERS = int(os.environ.get("MP_SIM_USERS", "4"))
HOURS = float(os.environ.get("MP_SIM_HOURS", "3"))
REPLICAS = int(os.environ.get("MP_SIM_REPLICAS", "2"))
SEED = int(os.environ.get("MP_SIM_SEED", "14"))
INTERVAL = 120
JITTER = 10
GRACE = INTERVAL + 2 * JITTER  # one lost heartbeat is still billed (never two in a row)
START = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)  # crosses midnight: two ledger days


def charged_metric() -> float:
    return REGISTRY.get_sample_value("midori_preview_usage_charged_seconds_total") or 0.0


def split_by_day(start: datetime, end: datetime, into: dict[str, float]) -> None:
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), UTC)
        part_end = min(end, midnight)
        into[start.date().isoformat()] += (part_end - start).total_seconds()
        start = part_end


async def test_charges_follow_watched_time_across_replicas(
    tmp_path: Path, pg_backend: Backend
) -> None:
    rng = random.Random(SEED)
    clock = ManualClock(START)
    settings = make_settings(
        tmp_path, pg_backend, heartbeat_grace_seconds=GRACE, daily_usage_cap_seconds=86_400,
        create_rate_per_minute=1000,
    )  # fmt: skip
    async with replicas(settings, clock, n=REPLICAS) as apps:
        before = charged_metric()
        users = [f"viewer{i}" for i in range(USERS)]
        sandbox = {u: await create_running(apps[i % REPLICAS], "site", user=u)
                   for i, u in enumerate(users)}  # fmt: skip
        # Each viewer's plan: (time, kind) with kind periodic / show / hide, then a stop.
        events: list[tuple[datetime, str, str]] = []
        end = START + timedelta(hours=HOURS)
        for u in users:
            t, last_lost = START, False
            next_toggle = START + timedelta(minutes=rng.uniform(5, 40))
            while True:
                t += timedelta(seconds=INTERVAL + rng.uniform(-JITTER, JITTER))
                if next_toggle < t and next_toggle < end:
                    events.append((next_toggle, u, "toggle"))
                    t = next_toggle  # the browser beats on the change; the schedule restarts
                    next_toggle += timedelta(minutes=rng.uniform(5, 40))
                    last_lost = False
                    continue
                if t >= end:
                    break
                lost = not last_lost and rng.random() < 0.15
                last_lost = lost
                if not lost:
                    events.append((t, u, "dup" if rng.random() < 0.15 else "beat"))
            events.append((end + timedelta(seconds=rng.uniform(0, 60)), u, "stop"))
        events.sort()
        visible = dict.fromkeys(users, True)
        since = {u: START for u in users}  # start of the current visible span
        watched: dict[str, dict[str, float]] = {u: defaultdict(float) for u in users}
        for when, u, kind in events:
            clock.set(when)
            sid = sandbox[u]
            pick = rng.randrange(REPLICAS)
            if kind == "toggle":
                if visible[u]:
                    split_by_day(since[u], when, watched[u])
                else:
                    since[u] = when
                visible[u] = not visible[u]
                res = await heartbeat(apps[pick], sid, user=u, visible=visible[u])
                assert res.status_code == 200, res.text
            elif kind == "dup":  # the same beat twice at once, to two replicas
                a, b = await asyncio.gather(
                    heartbeat(apps[pick], sid, user=u, visible=visible[u]),
                    heartbeat(apps[(pick + 1) % REPLICAS], sid, user=u, visible=visible[u]),
                )
                assert (a.status_code, b.status_code) == (200, 200), (a.text, b.text)
            elif kind == "beat":
                res = await heartbeat(apps[pick], sid, user=u, visible=visible[u])
                assert res.status_code == 200, res.text
            else:
                if visible[u]:
                    split_by_day(since[u], when, watched[u])
                assert (await stop(apps[pick], sid, user=u)).status_code == 200

        charged: dict[str, dict[str, int]] = {u: defaultdict(int) for u in users}
        for (user, day, _), seconds in (await ledger(apps[0])).items():
            charged[user][day] += seconds
        worst = 0.0
        for u in users:
            for day in set(watched[u]) | set(charged[u]):
                diff = charged[u][day] - watched[u][day]
                worst = max(worst, abs(diff))
                assert abs(diff) <= INTERVAL, (u, day, charged[u][day], watched[u][day])
                assert charged[u][day] <= settings.daily_usage_cap_seconds
        total = sum(sum(d.values()) for d in charged.values())
        assert charged_metric() - before == total  # the ledger is the sum of charges
        mirrors = {(u, day): await mirror(apps[0], u, day) for u in users for day in charged[u]}
        assert mirrors == {(u, d): s for u in users for d, s in charged[u].items()}
        print(f"\n{USERS} viewers x {HOURS:g} h on {REPLICAS} replicas, {len(events)} events: "
              f"charged {total} s, worst per-user-day difference {worst:.1f} s")  # fmt: skip
