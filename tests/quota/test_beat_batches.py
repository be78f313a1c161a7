"""The write-behind batch as a few statements on Postgres (`db/beat_batches.py`): a batch in
which one sandbox has several segments (a run broken in two) and another a segment already
applied charges exactly what segment-by-segment application charged."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from midori_preview.db.sandboxes import BeatSegment
from tests.conftest import Backend, make_settings, running_app
from tests.quota.helpers import create_running, ledger_total
from tests.support.clock import ManualClock

DAY = "2026-01-01"


async def test_a_batch_with_several_segments_of_a_sandbox_and_a_replayed_one_charges_once(
    tmp_path: Path, pg_backend: Backend, clock: ManualClock
) -> None:
    async with running_app(make_settings(tmp_path, pg_backend), clock=clock) as app:
        first = await create_running(app, "site", user="alice")
        second = await create_running(app, "site", user="bob")
        repo = app.services.db.sandboxes
        rows = [await repo.get(first), await repo.get(second)]
        assert rows[0] is not None and rows[1] is not None
        a, b = rows[0].charged_until, rows[1].charged_until
        assert a is not None and b is not None
        at = clock.now()

        def seg(sid: str, user: str, after: object, secs: int, start: int = 0) -> BeatSegment:
            base = a if sid == first else b
            assert isinstance(after, type(base))
            return BeatSegment(
                sid, after, base + timedelta(seconds=start + secs), at, True,
                [(user, "site", DAY, secs)],
            )  # fmt: skip

        batch = [
            seg(first, "alice", a, 10),
            seg(second, "bob", b, 5),
            seg(first, "alice", a + timedelta(seconds=10), 20, start=10),  # the run goes on
            seg(second, "bob", b, 7),  # starts where bob's row no longer is: not charged
        ]
        assert await repo.apply_beats(batch, at) == {second}
        assert await ledger_total(app, "alice") == 30
        assert await ledger_total(app, "bob") == 5
        moved = await repo.get(first)
        assert moved is not None and moved.charged_until == a + timedelta(seconds=30)
        # applied again (a replica died before forgetting it): nothing more
        assert await repo.apply_beats(batch, at) == {first, second}
        assert await ledger_total(app, "alice") == 30
        assert await ledger_total(app, "bob") == 5
