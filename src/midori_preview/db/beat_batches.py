"""Postgres: a batch of heartbeats written behind (`SandboxRepository.apply_beats`) as a few
statements instead of two per sandbox: each *round* (at most one segment per sandbox) is one
`UPDATE … FROM (VALUES …)` compare-and-set of every row's `charged_until` (`RETURNING` the rows
that moved) and one multi-row ledger upsert of what those rows charged, summed per user, project
and day. A sandbox with several segments in one batch (a run broken by a stop and a reload) has
its later ones in later rounds, in order. Same transaction, same outcome as segment by segment."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Boolean, String, column, or_, update, values
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession

from midori_preview.db.models import Sandbox, UsageLedger, UTCDateTime

if TYPE_CHECKING:
    from midori_preview.db.sandboxes import BeatSegment

ROWS_PER_STATEMENT = 1000  # bind parameters stay far below Postgres' 32,767


def rounds(segments: Sequence[BeatSegment]) -> list[list[BeatSegment]]:
    """Round k holds each sandbox's k-th segment (a round has a sandbox at most once)."""
    out: list[list[BeatSegment]] = []
    count: Counter[str] = Counter()
    for seg in segments:
        k = count[seg.sandbox_id]
        count[seg.sandbox_id] += 1
        if k == len(out):
            out.append([])
        out[k].append(seg)
    return out


async def apply_round(s: AsyncSession, segments: list[BeatSegment], now: datetime) -> set[str]:
    """One round, in the session's transaction: the ids whose compare-and-set did not match.
    Rows are taken in id order, so two replicas flushing the same batches at once lock them in
    the same order (one waits, then finds its compare-and-set no longer matches)."""
    segments = sorted(segments, key=lambda seg: seg.sandbox_id)
    moved: set[str] = set()
    for i in range(0, len(segments), ROWS_PER_STATEMENT):
        moved |= await _move(s, segments[i : i + ROWS_PER_STATEMENT])
    owed: Counter[tuple[str, str, str]] = Counter()
    for seg in segments:
        if seg.sandbox_id in moved:
            for user_id, project_id, day, seconds in seg.entries:
                if seconds > 0:
                    owed[(user_id, project_id, day)] += seconds
    rows = [
        {"user_id": u, "project_id": p, "day": d, "seconds": n, "updated_at": now}
        for (u, p, d), n in owed.items()
    ]
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        ins = postgresql.insert(UsageLedger).values(rows[i : i + ROWS_PER_STATEMENT])
        await s.execute(
            ins.on_conflict_do_update(
                index_elements=["user_id", "day", "project_id"],
                set_={"seconds": UsageLedger.seconds + ins.excluded.seconds, "updated_at": now},
            )
        )
    stale = [seg for seg in segments if seg.sandbox_id not in moved]
    for seg in stale:  # still: the browser was there (rare: a batch applied twice)
        await s.execute(
            update(Sandbox)
            .where(
                Sandbox.id == seg.sandbox_id,
                or_(Sandbox.last_heartbeat_at.is_(None), Sandbox.last_heartbeat_at < seg.at),
            )
            .values(last_heartbeat_at=seg.at, visible=seg.visible)
        )
    return {seg.sandbox_id for seg in stale}


async def _move(s: AsyncSession, segments: list[BeatSegment]) -> set[str]:
    beats = values(
        column("id", String), column("after", UTCDateTime()), column("until", UTCDateTime()),
        column("at", UTCDateTime()), column("visible", Boolean), name="beats",
    ).data([(g.sandbox_id, g.after, g.until, g.at, g.visible) for g in segments])  # fmt: skip
    result = await s.execute(
        update(Sandbox)
        .where(
            Sandbox.id == beats.c.id,
            Sandbox.charged_until.is_not_distinct_from(beats.c.after),
        )
        .values(charged_until=beats.c.until, last_heartbeat_at=beats.c.at, visible=beats.c.visible)
        .returning(Sandbox.id)
    )
    return set(result.scalars())
