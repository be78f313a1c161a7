"""Sandbox rows: reads, the compare-and-set every state change goes through, leases, the
heartbeat's charge, and the bounded queries the reaper runs. Sessions are short; none spans a
provider call."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Select,
    String,
    and_,
    column,
    exists,
    func,
    literal,
    or_,
    select,
    update,
    values,
)
from sqlalchemy.dialects import postgresql

from midori_preview.db.database import Database, rows_changed
from midori_preview.db.idempotency import insert_key
from midori_preview.db.models import IdempotencyKey, Sandbox, UsageLedger, UTCDateTime
from midori_preview.db.usage import LedgerEntry, add_usage
from midori_preview.previews.states import BUILDING, HOLDING, LIVE, TERMINAL, SandboxStatus

S = SandboxStatus


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

    async def touch_heartbeat(self, sandbox_id: str, now: datetime, visible: bool) -> None:
        async with self.db.writes() as s, s.begin():
            await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status.in_(LIVE))
                .values(last_heartbeat_at=now, visible=visible)
            )

    async def retire_stopped(self, before: datetime) -> int:
        """Rows that ended before `before` leave the active view: how many."""
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(
                    Sandbox.status.in_(TERMINAL),
                    Sandbox.active.is_(True),
                    Sandbox.updated_at <= before,
                )
                .values(active=False)
            )
            return rows_changed(result)

    # --- bounded queries (reaper, admin) ----------------------------------------------------

    async def _rows(self, stmt: Select[Any]) -> list[Sandbox]:
        async with self.db.reads() as s:
            return list(await s.scalars(stmt))

    async def running_rows(self, limit: int = 500) -> list[Sandbox]:
        return await self._rows(select(Sandbox).where(Sandbox.status == S.RUNNING).limit(limit))

    async def expired_rows(self, now: datetime, limit: int = 500) -> list[Sandbox]:
        return await self._rows(
            select(Sandbox).where(Sandbox.status.in_(LIVE), Sandbox.expires_at <= now).limit(limit)
        )

    async def stale_lease_rows(self, now: datetime, limit: int = 500) -> list[Sandbox]:
        return await self._rows(
            select(Sandbox)
            .where(
                Sandbox.status.in_(BUILDING),
                or_(Sandbox.lease_expires_at.is_(None), Sandbox.lease_expires_at <= now),
            )
            .limit(limit)
        )

    async def stuck_stopping_rows(self, before: datetime, limit: int = 500) -> list[Sandbox]:
        return await self._rows(
            select(Sandbox)
            .where(Sandbox.status == S.STOPPING, Sandbox.updated_at <= before)
            .limit(limit)
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
