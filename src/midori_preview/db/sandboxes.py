"""Sandbox rows: reads, the compare-and-set every state change goes through, leases, the
heartbeat's charge, and the bounded queries the reaper runs. Sessions are short; none spans a
provider call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    String,
    and_,
    column,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    tuple_,
    update,
    values,
)
from sqlalchemy.dialects import postgresql

from midori_preview.db import beat_batches
from midori_preview.db.database import Database, rows_changed
from midori_preview.db.idempotency import insert_key
from midori_preview.db.models import (
    SEEN_AT,
    IdempotencyKey,
    Sandbox,
    SandboxSource,
    UsageLedger,
    UTCDateTime,
)
from midori_preview.db.usage import LedgerEntry, add_usage
from midori_preview.previews.states import BUILDING, HOLDING, LIVE, TERMINAL, SandboxStatus

S = SandboxStatus
last_seen = SEEN_AT
Key = tuple[datetime, str]


@dataclass(frozen=True, slots=True)
class BeatSegment:
    """Consecutive heartbeats of one sandbox, as the ledger applies them (`apply_beats`)."""

    sandbox_id: str
    after: datetime | None  # the charged_until they continue from (None = NULL)
    until: datetime
    at: datetime  # the last heartbeat
    visible: bool
    entries: list[LedgerEntry]  # where a keyset batch ended: (the ordering time, the row id)


def _at(moment: datetime) -> Any:
    return literal(moment, UTCDateTime())


class SandboxRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- rows -------------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Sandbox | None:
        async with self.db.reads() as s:
            return await s.get(Sandbox, sandbox_id)

    async def get_for_user(self, sandbox_id: str, user_id: str) -> Sandbox | None:
        async with self.db.reads() as s:
            row = await s.get(Sandbox, sandbox_id)
            return row if row is not None and row.user_id == user_id else None

    async def insert(self, row: Sandbox, *, idempotency: IdempotencyKey | None = None) -> bool:
        """Insert the row (and its idempotency key) in one transaction. With the key already
        taken, nothing is written: False."""
        async with self.db.writes() as s, s.begin():
            if idempotency is not None and not await insert_key(s, idempotency):
                return False
            s.add(row)
        return True

    async def live_for_user(self, user_id: str) -> list[Sandbox]:
        async with self.db.reads() as s:
            rows = await s.scalars(
                select(Sandbox)
                .where(Sandbox.user_id == user_id, Sandbox.status.in_(LIVE))
                .order_by(Sandbox.created_at)
            )
            return list(rows)

    async def live_same_source(self, user_id: str, project_id: str, digest: str) -> Sandbox | None:
        async with self.db.reads() as s:
            return await s.scalar(
                select(Sandbox)
                .where(
                    Sandbox.user_id == user_id,
                    Sandbox.project_id == project_id,
                    Sandbox.source_digest == digest,
                    Sandbox.status.in_(LIVE),
                )
                .order_by(Sandbox.created_at.desc())
                .limit(1)
            )

    # --- state changes ----------------------------------------------------------------------

    async def transition(
        self,
        sandbox_id: str,
        *,
        from_status: Iterable[SandboxStatus],
        to_status: SandboxStatus,
        now: datetime,
        expect: Mapping[str, Any] | None = None,
        entries: Sequence[LedgerEntry] = (),
        **fields: Any,
    ) -> bool:
        """Compare-and-set the state (and the `expect`ed column values, None = NULL), and add
        `entries` to the usage ledger in the same transaction: True when this caller moved the
        row. Callers go through `previews.transitions`, which checks the state table first."""
        conds = [Sandbox.id == sandbox_id, Sandbox.status.in_(tuple(from_status))]
        for name, value in (expect or {}).items():
            col = getattr(Sandbox, name)
            conds.append(col.is_(None) if value is None else col == value)
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                update(Sandbox).where(*conds).values(status=to_status, updated_at=now, **fields)
            )
            if not rows_changed(result):
                return False
            await add_usage(s, entries, now)
            return True

    async def renew_lease(self, sandbox_id: str, owner: str, until: datetime) -> bool:
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(
                    Sandbox.id == sandbox_id,
                    Sandbox.lease_owner == owner,
                    Sandbox.status.in_(BUILDING),
                )
                .values(lease_expires_at=until)
            )
            return rows_changed(result) > 0

    async def charge(
        self,
        sandbox_id: str,
        *,
        expected_charged_until: datetime | None,
        charged_until: datetime,
        now: datetime,
        visible: bool,
        entries: Sequence[LedgerEntry],
    ) -> bool:
        """Record a heartbeat of a running sandbox and charge `entries` — only if the row's last
        charged time is still `expected_charged_until` (so a duplicate charges once)."""
        row_update = (
            update(Sandbox)
            .where(
                Sandbox.id == sandbox_id,
                Sandbox.status == S.RUNNING,
                Sandbox.charged_until == expected_charged_until
                if expected_charged_until is not None
                else Sandbox.charged_until.is_(None),
            )
            .values(
                charged_until=charged_until, last_heartbeat_at=now, visible=visible, updated_at=now
            )
        )
        entries = [e for e in entries if e[3] > 0]
        if entries and self.db.dialect == "postgresql":
            # ONE statement (atomic on its own, no BEGIN/COMMIT round trips): the ledger rows
            # are inserted only if the row's compare-and-set matched.
            async with self.db.single_statement_writes() as s:
                return bool((await s.execute(_charge_statement(row_update, entries, now))).first())
        async with self.db.writes() as s, s.begin():
            if not rows_changed(await s.execute(row_update)):
                return False
            await add_usage(s, entries, now)
            return True

    async def apply_beats(self, segments: Sequence[BeatSegment], now: datetime) -> set[str]:
        """Apply heartbeats written behind (`quota.beats`), in one transaction: each segment moves
        its row's `charged_until` from `after` to `until` (and records the last heartbeat and the
        tab's visibility) and charges its entries — only if `charged_until` is still `after`, so
        a segment applied twice charges once. The ids whose segment did not apply."""
        skipped: set[str] = set()
        if self.db.dialect == "postgresql":  # a few statements per batch (`beat_batches.py`)
            async with self.db.writes() as s, s.begin():
                for segs in beat_batches.rounds(segments):
                    skipped |= await beat_batches.apply_round(s, segs, now)
            return skipped
        async with self.db.writes() as s, s.begin():
            for seg in segments:
                cas = (
                    Sandbox.charged_until.is_(None)
                    if seg.after is None
                    else Sandbox.charged_until == seg.after
                )
                moved = await s.execute(
                    update(Sandbox)
                    .where(Sandbox.id == seg.sandbox_id, cas)
                    .values(charged_until=seg.until, last_heartbeat_at=seg.at, visible=seg.visible)
                )
                if rows_changed(moved):
                    await add_usage(s, seg.entries, now)
                    continue
                skipped.add(seg.sandbox_id)  # still: the browser was there
                await s.execute(
                    update(Sandbox)
                    .where(
                        Sandbox.id == seg.sandbox_id,
                        or_(
                            Sandbox.last_heartbeat_at.is_(None), Sandbox.last_heartbeat_at < seg.at
                        ),
                    )
                    .values(last_heartbeat_at=seg.at, visible=seg.visible)
                )
        return skipped

    async def touch_heartbeat(self, sandbox_id: str, now: datetime, visible: bool) -> None:
        async with self.db.writes() as s, s.begin():
            await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status.in_(LIVE))
                .values(last_heartbeat_at=now, visible=visible)
            )

    async def retire_stopped(self, before: datetime) -> int:
        """Rows that ended before `before` leave the active view, and the sources they served
        (kept for live updates) are dropped: how many rows."""
        ended = (
            Sandbox.status.in_(TERMINAL),
            Sandbox.active.is_(True),
            Sandbox.updated_at <= before,
        )
        async with self.db.writes() as s, s.begin():
            await s.execute(
                delete(SandboxSource).where(
                    SandboxSource.sandbox_id.in_(select(Sandbox.id).where(*ended))
                )
            )
            result = await s.execute(update(Sandbox).where(*ended).values(active=False))
            return rows_changed(result)

    # --- bounded queries (reaper, admin) ----------------------------------------------------

    async def _rows(self, stmt: Select[Any]) -> list[Sandbox]:
        async with self.db.reads() as s:
            return list(await s.scalars(stmt))

    # Every reaper query selects only what is due, in keyset order (so a pass continues batch
    # after batch until none is due, and rows it could not act on do not come back in the same
    # pass), each served by an index of migration 0006.

    async def idle_rows(
        self, *, visible: bool, seen_before: datetime, after: Key | None, limit: int
    ) -> list[Sandbox]:
        """Running user sandboxes (visible or hidden tab) last seen at or before `seen_before`
        (last heartbeat, else ready, else created); `ix_sandboxes_idle`."""
        conds = [
            Sandbox.status == S.RUNNING,
            Sandbox.kind == "user",
            Sandbox.visible == visible,
            last_seen <= seen_before,
        ]
        if after is not None:
            conds.append(tuple_(last_seen, Sandbox.id) > tuple_(_at(after[0]), after[1]))
        return await self._rows(
            select(Sandbox).where(*conds).order_by(last_seen, Sandbox.id).limit(limit)
        )

    async def watched_rows(
        self, *, seen_after: datetime, after: Key | None, limit: int
    ) -> list[Sandbox]:
        """Running user sandboxes seen after `seen_after` (whose provider idle clock the reaper
        resets); `ix_sandboxes_idle` too."""
        conds = [Sandbox.status == S.RUNNING, Sandbox.kind == "user", last_seen > seen_after]
        if after is not None:
            conds.append(tuple_(last_seen, Sandbox.id) > tuple_(_at(after[0]), after[1]))
        return await self._rows(
            select(Sandbox).where(*conds).order_by(last_seen, Sandbox.id).limit(limit)
        )

    async def expired_rows(
        self, now: datetime, *, after: Key | None = None, limit: int = 500
    ) -> list[Sandbox]:
        """Live rows past their TTL; `ix_sandboxes_status_expires`."""
        conds = [Sandbox.status.in_(LIVE), Sandbox.expires_at <= now]
        if after is not None:
            conds.append(tuple_(Sandbox.expires_at, Sandbox.id) > tuple_(_at(after[0]), after[1]))
        return await self._rows(
            select(Sandbox).where(*conds).order_by(Sandbox.expires_at, Sandbox.id).limit(limit)
        )

    async def stale_lease_rows(
        self, now: datetime, *, after: Key | None = None, limit: int = 500
    ) -> list[Sandbox]:
        """Builds whose lease ran out (or never had one); `ix_sandboxes_status_lease`."""
        conds = [
            Sandbox.status.in_(BUILDING),
            or_(Sandbox.lease_expires_at.is_(None), Sandbox.lease_expires_at <= now),
        ]
        if after is not None:
            conds.append(Sandbox.id > after[1])
        return await self._rows(select(Sandbox).where(*conds).order_by(Sandbox.id).limit(limit))

    async def stuck_stopping_rows(
        self, before: datetime, *, after: Key | None = None, limit: int = 500
    ) -> list[Sandbox]:
        """Stops unfinished since `before`; `ix_sandboxes_active_status_updated`."""
        conds = [
            Sandbox.active.is_(True),
            Sandbox.status == S.STOPPING,
            Sandbox.updated_at <= before,
        ]
        if after is not None:
            conds.append(tuple_(Sandbox.updated_at, Sandbox.id) > tuple_(_at(after[0]), after[1]))
        return await self._rows(
            select(Sandbox).where(*conds).order_by(Sandbox.updated_at, Sandbox.id).limit(limit)
        )

    async def holding_rows(self) -> list[Sandbox]:
        """Rows that should still have a provider sandbox (live, or stopping)."""
        return await self._rows(select(Sandbox).where(Sandbox.status.in_(HOLDING)))

    async def holding_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are rows that should still have a provider sandbox."""
        if not ids:
            return set()
        async with self.db.reads() as s:
            return set(
                await s.scalars(
                    select(Sandbox.id).where(Sandbox.id.in_(ids), Sandbox.status.in_(HOLDING))
                )
            )

    async def status_counts(self) -> dict[SandboxStatus, int]:
        """Rows in the active view, per state."""
        async with self.db.reads() as s:
            rows = await s.execute(
                select(Sandbox.status, func.count())
                .where(Sandbox.active.is_(True))
                .group_by(Sandbox.status)
            )
            return {status: int(n) for status, n in rows.all()}

    async def active_rows(self, limit: int = 500) -> list[Sandbox]:
        return await self._rows(
            select(Sandbox)
            .where(Sandbox.active.is_(True))
            .order_by(Sandbox.created_at.desc())
            .limit(limit)
        )

    async def rows_between(self, start: datetime, end: datetime) -> list[Sandbox]:
        """Rows created or stopped in [start, end) (usage reports)."""
        async with self.db.reads() as s:
            rows = await s.scalars(
                select(Sandbox).where(
                    or_(
                        and_(Sandbox.created_at >= start, Sandbox.created_at < end),
                        and_(Sandbox.stopped_at >= start, Sandbox.stopped_at < end),
                    )
                )
            )
            return list(rows)


def _charge_statement(row_update: Any, entries: Sequence[LedgerEntry], now: datetime) -> Any:
    """Postgres: the row's compare-and-set and the ledger upsert as one data-modifying CTE; it
    returns a row only when both happened."""
    moved = row_update.returning(Sandbox.id).cte("moved")
    charges = values(
        column("user_id", String), column("project_id", String),
        column("day", String), column("seconds", BigInteger), name="charges",
    ).data(list(entries))  # fmt: skip
    ins = postgresql.insert(UsageLedger).from_select(
        ["user_id", "project_id", "day", "seconds", "updated_at"],
        select(
            charges.c.user_id, charges.c.project_id, charges.c.day,
            charges.c.seconds, literal(now, UTCDateTime()),
        ).select_from(charges).where(exists(select(moved.c.id))),
    )  # fmt: skip
    return ins.on_conflict_do_update(
        index_elements=["user_id", "day", "project_id"],
        set_={"seconds": UsageLedger.seconds + ins.excluded.seconds, "updated_at": now},
    ).returning(UsageLedger.seconds)
