"""Queries of the GitHub integration: webhook deliveries (insert-on-conflict) and the mapping of a
pull request or branch to its sandbox, comment and deployment."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from midori_preview.db.database import Database, dialect_insert, rows_changed
from midori_preview.db.models import GitHubDelivery, GitHubPreview
from midori_preview.github.states import ACTIVE

UNSET: Any = object()


class GitHubRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record_delivery(
        self, delivery_id: str, event: str, action: str | None, now: datetime
    ) -> bool:
        """True for the first sighting of this delivery id, or for a redelivery of one whose
        work failed (claimed back); False for any other redelivery or a concurrent duplicate
        (exactly one caller gets True)."""
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                dialect_insert(s, GitHubDelivery)
                .values(delivery_id=delivery_id, event=event, action=action, received_at=now)
                .on_conflict_do_nothing()
            )
            if rows_changed(result) > 0:
                return True
            again = await s.execute(
                update(GitHubDelivery)
                .where(
                    GitHubDelivery.delivery_id == delivery_id, GitHubDelivery.outcome == "failed"
                )
                .values(outcome=None, received_at=now)
            )
            return rows_changed(again) > 0

    async def finish_delivery(self, delivery_id: str, outcome: str) -> None:
        """Record how a delivery's work ended: `done` or `failed` (then a redelivery runs)."""
        async with self.db.writes() as s, s.begin():
            await s.execute(
                update(GitHubDelivery)
                .where(GitHubDelivery.delivery_id == delivery_id)
                .values(outcome=outcome)
            )

    async def prune_deliveries(self, before: datetime) -> int:
        async with self.db.writes() as s, s.begin():
            result = await s.execute(
                delete(GitHubDelivery).where(GitHubDelivery.received_at < before)
            )
            return rows_changed(result)

    async def get(self, repo: str, target: str) -> GitHubPreview | None:
        async with self.db.writes() as s:
            return await s.get(GitHubPreview, (repo, target))

    async def open_previews(self, limit: int = 500) -> list[GitHubPreview]:
        """Mappings whose preview is building or ready (bounded, oldest update first)."""
        async with self.db.writes() as s:
            rows = await s.scalars(
                select(GitHubPreview)
                .where(GitHubPreview.state.in_(ACTIVE))
                .order_by(GitHubPreview.updated_at)
                .limit(limit)
            )
            return list(rows)

    async def unsynced(self, limit: int = 500) -> list[GitHubPreview]:
        """Mappings whose comment or deployment state GitHub does not have yet (bounded)."""
        async with self.db.writes() as s:
            rows = await s.scalars(
                select(GitHubPreview)
                .where(
                    (GitHubPreview.comment_synced.is_(False))
                    | (GitHubPreview.deploy_synced.is_(False))
                )
                .order_by(GitHubPreview.updated_at)
                .limit(limit)
            )
            return list(rows)

    async def save(self, row: GitHubPreview) -> None:
        """Insert or overwrite the mapping of (repo, target)."""
        values = {c.name: getattr(row, c.key) for c in GitHubPreview.__table__.columns}
        changed = {k: v for k, v in values.items() if k not in ("repo", "target", "created_at")}
        async with self.db.writes() as s, s.begin():
            await s.execute(
                dialect_insert(s, GitHubPreview)
                .values(**values)
                .on_conflict_do_update(index_elements=["repo", "target"], set_=changed)
            )

    async def update(
        self, repo: str, target: str, *, sandbox_id: Any = UNSET, **fields: Any
    ) -> bool:
        """Change fields; with `sandbox_id`, only while the mapping still points at that sandbox
        (a newer build took over otherwise). True when a row changed."""
        stmt = update(GitHubPreview).where(
            GitHubPreview.repo == repo, GitHubPreview.target == target
        )
        if sandbox_id is not UNSET:
            stmt = stmt.where(GitHubPreview.sandbox_id == sandbox_id)
        async with self.db.writes() as s, s.begin():
            result = await s.execute(stmt.values(**fields))
            return rows_changed(result) > 0
