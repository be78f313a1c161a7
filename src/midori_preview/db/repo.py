"""Repositories: every query the services run. Sessions are short; none spans a provider call."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    update,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from midori_preview.db.models import (
    IdempotencyKey,
    Sandbox,
    ServiceState,
    UsageLedger,
    UTCDateTime,
)

TERMINAL = ("stopped", "error")
BUILDING = ("requested", "creating", "uploading", "installing", "building", "starting")
LIVE = (*BUILDING, "running")


def _insert(session: AsyncSession, table: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


class Repository:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        reads: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.sessions = sessions  # writes: one transaction each
        # Reads run in autocommit: no BEGIN/ROLLBACK round trips on the hot paths (status,
        # heartbeat); each is a single statement, so it sees one consistent snapshot anyway.
        self.reads = reads or sessions

    # --- sandboxes ------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Sandbox | None:
        async with self.reads() as s:
            return await s.get(Sandbox, sandbox_id)

    async def get_for_user(self, sandbox_id: str, user_id: str) -> Sandbox | None:
        async with self.reads() as s:
            row = await s.get(Sandbox, sandbox_id)
            return row if row is not None and row.user_id == user_id else None

    async def insert_sandbox(
        self, row: Sandbox, *, idempotency: IdempotencyKey | None = None
    ) -> Sandbox | None:
        """Insert the row (and its idempotency key). With a key already taken, nothing is written
        and the key's existing row is returned instead."""
        async with self.sessions() as s, s.begin():
            if idempotency is not None:
                stmt = (
                    _insert(s, IdempotencyKey)
                    .values(
                        user_id=idempotency.user_id,
                        key=idempotency.key,
                        request_hash=idempotency.request_hash,
                        sandbox_id=idempotency.sandbox_id,
                        created_at=idempotency.created_at,
                    )
                    .on_conflict_do_nothing()
                )
                result = await s.execute(stmt)
                if result.rowcount == 0:  # type: ignore[attr-defined]
                    return None
            s.add(row)
        return row

    async def insert_sandbox_key(self, key: IdempotencyKey) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(
                _insert(s, IdempotencyKey)
                .values(
                    user_id=key.user_id,
                    key=key.key,
                    request_hash=key.request_hash,
                    sandbox_id=key.sandbox_id,
                    created_at=key.created_at,
                )
                .on_conflict_do_nothing()
            )

    async def get_idempotency(self, user_id: str, key: str) -> IdempotencyKey | None:
        async with self.reads() as s:
            return await s.get(IdempotencyKey, (user_id, key))

    async def transition(
        self,
        sandbox_id: str,
        *,
        from_status: Iterable[str],
        to_status: str,
        now: datetime,
        expect: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Compare-and-set the state (and the `expect`ed column values, None = NULL): True when
        this caller moved the row."""
        conds = [Sandbox.id == sandbox_id, Sandbox.status.in_(tuple(from_status))]
        for name, value in (expect or {}).items():
            column = getattr(Sandbox, name)
            conds.append(column.is_(None) if value is None else column == value)
        async with self.sessions() as s, s.begin():
            result = await s.execute(
                update(Sandbox).where(*conds).values(status=to_status, updated_at=now, **fields)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def renew_lease(self, sandbox_id: str, owner: str, until: datetime) -> bool:
        async with self.sessions() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(
                    Sandbox.id == sandbox_id,
                    Sandbox.lease_owner == owner,
                    Sandbox.status.in_(BUILDING),
                )
                .values(lease_expires_at=until)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def live_for_user(self, user_id: str) -> list[Sandbox]:
        async with self.reads() as s:
            rows = await s.scalars(
                select(Sandbox)
                .where(Sandbox.user_id == user_id, Sandbox.status.in_(LIVE))
                .order_by(Sandbox.created_at)
            )
            return list(rows)

    async def live_same_source(self, user_id: str, project_id: str, digest: str) -> Sandbox | None:
        async with self.reads() as s:
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

    async def charge(
        self,
        sandbox_id: str,
        *,
        expected_charged_until: datetime | None,
        charged_until: datetime,
        now: datetime,
        visible: bool,
        entries: Sequence[tuple[str, str, str, int]],
    ) -> bool:
        """Record a heartbeat and charge `entries` ((user, project, day, seconds)) — only if the
        row's last charged time is still `expected_charged_until` (so a duplicate charges once)."""
        row_update = (
            update(Sandbox)
            .where(
                Sandbox.id == sandbox_id,
                Sandbox.status == "running",
                Sandbox.charged_until == expected_charged_until
                if expected_charged_until is not None
                else Sandbox.charged_until.is_(None),
            )
            .values(
                charged_until=charged_until, last_heartbeat_at=now, visible=visible, updated_at=now
            )
        )
        entries = [e for e in entries if e[3] > 0]
        async with self.reads() as s:
            if entries and s.get_bind().dialect.name == "postgresql":
                # The heartbeat's write in ONE statement (atomic on its own, no BEGIN/COMMIT round
                # trips): the ledger rows are inserted only if the row's compare-and-set matched.
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
                upsert = ins.on_conflict_do_update(
                    index_elements=["user_id", "day", "project_id"],
                    set_={"seconds": UsageLedger.seconds + ins.excluded.seconds, "updated_at": now},
                ).returning(UsageLedger.seconds)
                return bool((await s.execute(upsert)).first())
        async with self.sessions() as s, s.begin():
            result = await s.execute(row_update)
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            await self._add_usage(s, entries, now)
            return True

    async def touch_heartbeat(self, sandbox_id: str, now: datetime, visible: bool) -> None:
        async with self.sessions() as s, s.begin():
            await s.execute(
                update(Sandbox)
                .where(Sandbox.id == sandbox_id, Sandbox.status.in_(LIVE))
                .values(last_heartbeat_at=now, visible=visible)
            )

    async def _add_usage(
        self, s: AsyncSession, entries: Sequence[tuple[str, str, str, int]], now: datetime
    ) -> None:
        for user_id, project_id, day, seconds in entries:
            if seconds <= 0:
                continue
            stmt = _insert(s, UsageLedger).values(
                user_id=user_id, project_id=project_id, day=day, seconds=seconds, updated_at=now
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["user_id", "day", "project_id"],
                set_={"seconds": UsageLedger.seconds + stmt.excluded.seconds, "updated_at": now},
            )
            await s.execute(stmt)

    async def stop_and_charge(
        self,
        sandbox_id: str,
        *,
        from_status: Iterable[str],
        to_status: str,
        now: datetime,
        expected_charged_until: datetime | None,
        charged_until: datetime | None,
        entries: Sequence[tuple[str, str, str, int]],
        **fields: Any,
    ) -> bool:
        """Move the row towards stopped and charge its last seconds in one transaction."""
        async with self.sessions() as s, s.begin():
            conds = [Sandbox.id == sandbox_id, Sandbox.status.in_(tuple(from_status))]
            if entries:
                conds.append(
                    Sandbox.charged_until == expected_charged_until
                    if expected_charged_until is not None
                    else Sandbox.charged_until.is_(None)
                )
            values: dict[str, Any] = {"status": to_status, "updated_at": now, **fields}
            if entries and charged_until is not None:
                values["charged_until"] = charged_until
            result = await s.execute(update(Sandbox).where(*conds).values(**values))
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            await self._add_usage(s, entries, now)
            return True

    # --- usage ----------------------------------------------------------------------------

    async def used_seconds(self, user_id: str, day: str) -> int:
        async with self.reads() as s:
            total = await s.scalar(
                select(func.coalesce(func.sum(UsageLedger.seconds), 0)).where(
                    UsageLedger.user_id == user_id, UsageLedger.day == day
                )
            )
            return int(total or 0)

    async def usage_by_user_for_day(self, day: str) -> dict[str, int]:
        async with self.reads() as s:
            rows = await s.execute(
                select(UsageLedger.user_id, func.sum(UsageLedger.seconds))
                .where(UsageLedger.day == day)
                .group_by(UsageLedger.user_id)
            )
            return {user: int(total) for user, total in rows.all()}

    async def usage_report(self, day_from: str, day_to: str, group_by: str) -> list[Any]:
        col = UsageLedger.user_id if group_by == "user" else UsageLedger.project_id
        async with self.reads() as s:
            rows = await s.execute(
                select(UsageLedger.day, col, func.sum(UsageLedger.seconds))
                .where(UsageLedger.day >= day_from, UsageLedger.day <= day_to)
                .group_by(UsageLedger.day, col)
                .order_by(UsageLedger.day, col)
            )
            return list(rows.all())

    async def sandbox_rows_between(self, start: datetime, end: datetime) -> list[Sandbox]:
        async with self.reads() as s:
            rows = await s.scalars(
                select(Sandbox).where(
                    or_(
                        and_(Sandbox.created_at >= start, Sandbox.created_at < end),
                        and_(Sandbox.stopped_at >= start, Sandbox.stopped_at < end),
                    )
                )
            )
            return list(rows)

    # --- reaper ---------------------------------------------------------------------------

    async def _rows(self, stmt: Select[Any]) -> list[Sandbox]:
        async with self.reads() as s:
            return list(await s.scalars(stmt))

    async def running_rows(self, limit: int = 500) -> list[Sandbox]:
        return await self._rows(select(Sandbox).where(Sandbox.status == "running").limit(limit))

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
            .where(Sandbox.status == "stopping", Sandbox.updated_at <= before)
            .limit(limit)
        )

    async def live_rows(self) -> list[Sandbox]:
        return await self._rows(select(Sandbox).where(Sandbox.status.in_((*LIVE, "stopping"))))

    async def live_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of `ids` are rows that should still have a provider sandbox."""
        if not ids:
            return set()
        async with self.reads() as s:
            return set(
                await s.scalars(
                    select(Sandbox.id).where(
                        Sandbox.id.in_(ids), Sandbox.status.in_((*LIVE, "stopping"))
                    )
                )
            )

    async def retire_stopped(self, before: datetime) -> int:
        async with self.sessions() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(
                    Sandbox.status.in_(TERMINAL),
                    Sandbox.active.is_(True),
                    Sandbox.updated_at <= before,
                )
                .values(active=False)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def prune_idempotency(self, before: datetime) -> int:
        async with self.sessions() as s, s.begin():
            result = await s.execute(
                delete(IdempotencyKey).where(IdempotencyKey.created_at < before)
            )
            return int(result.rowcount)  # type: ignore[attr-defined]

    async def status_counts(self) -> dict[str, int]:
        async with self.reads() as s:
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

    # --- shared state ---------------------------------------------------------------------

    async def get_state(self, key: str) -> dict[str, Any] | None:
        async with self.reads() as s:
            row = await s.get(ServiceState, key)
            return dict(row.value) if row is not None else None

    async def set_state(self, key: str, value: dict[str, Any], now: datetime) -> None:
        async with self.sessions() as s, s.begin():
            stmt = _insert(s, ServiceState).values(key=key, value=value, updated_at=now)
            stmt = stmt.on_conflict_do_update(
                index_elements=["key"], set_={"value": stmt.excluded.value, "updated_at": now}
            )
            await s.execute(stmt)
