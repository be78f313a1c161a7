"""State changes of many sandbox rows in one statement (the reaper's batches): the same
compare-and-set as `SandboxRepository.transition`, per row, in one UPDATE … RETURNING.

On Postgres the rows travel as arrays (`UPDATE … FROM unnest(ids, states, expected …)`): a
handful of parameters whatever the batch's size, joined on the primary key; SQLite gets the
same conditions as IN lists."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    String,
    TypeDecorator,
    and_,
    bindparam,
    column,
    false,
    func,
    or_,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

from midori_preview.db.database import Database
from midori_preview.db.models import Sandbox
from midori_preview.previews.states import SandboxStatus


async def transition_many(
    db: Database,
    rows: Sequence[tuple[str, SandboxStatus]],
    *,
    to_status: SandboxStatus,
    now: datetime,
    expect: Mapping[str, Mapping[str, Any]] | None = None,
    **fields: Any,
) -> list[str]:
    """Move each of `rows` (id, its state as read) to `to_status` if it is still in that state
    (and, for each column in `expect`, still holds the value given for its id — every row needs
    one; None = NULL), writing `fields`: the ids this caller moved. Callers go through
    `previews.transitions`, which checks the state table first."""
    if not rows:
        return []
    dialect = db.engine.dialect
    conds = (
        _joined(rows, expect or {}, dialect)
        if dialect.name == "postgresql"
        else _listed(rows, expect or {})
    )
    stmt = (
        update(Sandbox)
        .where(*conds)
        .values(status=to_status, updated_at=now, **fields)
        .returning(Sandbox.id)
    )
    if dialect.name == "postgresql":  # one statement, atomic on its own: no BEGIN/COMMIT
        async with db.single_statement_writes() as s:
            conn = await s.connection()  # Core: no ORM bookkeeping for a batch of ids
            return [str(sandbox_id) for sandbox_id in (await conn.execute(stmt)).scalars()]
    async with db.writes() as s, s.begin():
        conn = await s.connection()
        return [str(sandbox_id) for sandbox_id in (await conn.execute(stmt)).scalars()]


def _joined(
    rows: Sequence[tuple[str, SandboxStatus]],
    expect: Mapping[str, Mapping[str, Any]],
    dialect: Dialect,
) -> list[Any]:
    """Postgres: the rows as parallel arrays, unnested and joined on the primary key."""
    ids = [sandbox_id for sandbox_id, _ in rows]
    arrays: list[Any] = [
        bindparam(None, ids, type_=postgresql.ARRAY(String)),
        bindparam(None, [str(status) for _, status in rows], type_=postgresql.ARRAY(String)),
    ]
    names = [column("id", String), column("status", String)]
    for i, (name, values) in enumerate(expect.items()):
        col_type = getattr(Sandbox, name).type
        given = [values[sandbox_id] for sandbox_id in ids]
        if isinstance(col_type, TypeDecorator):
            given = [col_type.process_bind_param(value, dialect) for value in given]
            col_type = col_type.impl
        arrays.append(bindparam(None, given, type_=postgresql.ARRAY(col_type)))
        names.append(column(f"e{i}", col_type))
    given_rows = func.unnest(*arrays).table_valued(*names).render_derived(name="given")
    conds = [Sandbox.id == given_rows.c.id, Sandbox.status == given_rows.c.status]
    for i, name in enumerate(expect):
        conds.append(getattr(Sandbox, name).is_not_distinct_from(given_rows.c[f"e{i}"]))
    return conds


def _listed(
    rows: Sequence[tuple[str, SandboxStatus]], expect: Mapping[str, Mapping[str, Any]]
) -> list[Any]:
    """SQLite: the same conditions as IN lists."""
    by_status: dict[SandboxStatus, list[str]] = defaultdict(list)
    for sandbox_id, status in rows:
        by_status[status].append(sandbox_id)
    conds = [
        Sandbox.id.in_([sandbox_id for sandbox_id, _ in rows]),
        or_(*(and_(Sandbox.status == s, Sandbox.id.in_(ids)) for s, ids in by_status.items())),
    ]
    for name, values in expect.items():
        conds.append(_holds(name, values))
    return conds


def _holds(name: str, values: Mapping[str, Any]) -> Any:
    """Each row's column `name` still equals the value given for its id (None = NULL)."""
    col = getattr(Sandbox, name)
    nulls = [sandbox_id for sandbox_id, value in values.items() if value is None]
    pairs = [(sandbox_id, value) for sandbox_id, value in values.items() if value is not None]
    either = []
    if nulls:
        either.append(and_(Sandbox.id.in_(nulls), col.is_(None)))
    if pairs:
        either.append(tuple_(Sandbox.id, col).in_(pairs))
    return or_(*either) if either else false()
