"""State changes of many sandbox rows in one statement (the reaper's batches): the same
compare-and-set as `SandboxRepository.transition`, per row, in one UPDATE … RETURNING."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, false, or_, tuple_, update

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
    (and, for each column in `expect`, still holds the value given for its id; None = NULL),
    writing `fields`: the ids this caller moved. Callers go through `previews.transitions`."""
    if not rows:
        return []
    by_status: dict[SandboxStatus, list[str]] = defaultdict(list)
    for sandbox_id, status in rows:
        by_status[status].append(sandbox_id)
    conds = [
        Sandbox.id.in_([sandbox_id for sandbox_id, _ in rows]),
        or_(*(and_(Sandbox.status == s, Sandbox.id.in_(ids)) for s, ids in by_status.items())),
    ]
    for name, values in (expect or {}).items():
        conds.append(_holds(name, values))
    stmt = (
        update(Sandbox)
        .where(*conds)
        .values(status=to_status, updated_at=now, **fields)
        .returning(Sandbox.id)
    )
    async with db.writes() as s, s.begin():
        return list(await s.scalars(stmt, execution_options={"synchronize_session": False}))


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
