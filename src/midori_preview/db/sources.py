"""What each sandbox serves (`sandbox_sources`) and its version: live updates read the source a
sandbox was built or last updated with, and bump the version with the new source in one
transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update

from midori_preview.db.database import Database, dialect_insert, rows_changed
from midori_preview.db.models import Sandbox, SandboxSource
from midori_preview.previews.states import SandboxStatus


class SourceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def get(self, sandbox_id: str) -> SandboxSource | None:
        async with self.db.reads() as s:
            return await s.get(SandboxSource, sandbox_id)

    async def record(
        self, sandbox_id: str, spec: dict[str, Any], files: dict[str, str], now: datetime
    ) -> None:
        """Remember what a new sandbox is built from (a row already there is replaced)."""
        async with self.db.writes() as s, s.begin():
            stmt = dialect_insert(s, SandboxSource).values(
                sandbox_id=sandbox_id, spec=spec, files=files, updated_at=now
            )
            await s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["sandbox_id"],
                    set_={"spec": spec, "files": files, "updated_at": now},
                )
            )

    async def bump(
        self,
        sandbox_id: str,
        *,
        version: int,
        digest: str,
        spec: dict[str, Any],
        files: dict[str, str],
        now: datetime,
    ) -> bool:
        """The sandbox now serves `version + 1` of its source: only if it still runs `version`
        (compare-and-set), together with the source it serves now. True when it moved."""
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                update(Sandbox)
                .where(
                    Sandbox.id == sandbox_id,
                    Sandbox.status == SandboxStatus.RUNNING,
                    Sandbox.version == version,
                )
                .values(
                    version=version + 1,
                    source_updated_at=now,
                    source_digest=digest,
                    updated_at=now,
                )
            )
            if not rows_changed(result):
                return False
            stmt = dialect_insert(s, SandboxSource).values(
                sandbox_id=sandbox_id, spec=spec, files=files, updated_at=now
            )
            await s.execute(
                stmt.on_conflict_do_update(
                    index_elements=["sandbox_id"],
                    set_={"spec": spec, "files": files, "updated_at": now},
                )
            )
            return True
