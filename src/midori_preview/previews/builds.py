"""The builds running in this process: one pipeline task per admitted sandbox, cancelled by a stop
of that sandbox or at shutdown (each cleans up after itself)."""

from __future__ import annotations

import asyncio

from midori_preview.db.models import Sandbox
from midori_preview.previews.pipeline import Pipeline
from midori_preview.previews.sources import BuildPlan
from midori_preview.providers.base import SandboxSpec
from midori_preview.providers.labels import sandbox_labels


class Builds:
    def __init__(self, *, pipeline: Pipeline, deployment: str) -> None:
        self.pipeline = pipeline
        self.deployment = deployment
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, row: Sandbox, plan: BuildPlan) -> None:
        """Build `row`'s sandbox in the background."""
        spec = SandboxSpec(
            sandbox_id=row.id,
            user_id=row.user_id,
            project_id=row.project_id,
            labels=sandbox_labels(
                deployment=self.deployment,
                sandbox_id=row.id,
                user_id=row.user_id,
                project_id=row.project_id,
            ),
        )
        task = asyncio.create_task(self.pipeline.run(row.id, spec, plan), name=f"build:{row.id}")
        self._tasks[row.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(row.id, None))

    async def cancel(self, sandbox_id: str) -> None:
        """Cancel the build of `sandbox_id` if it runs here, and wait until it has cleaned up."""
        task = self._tasks.get(sandbox_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def shutdown(self) -> None:
        """Cancel every build in flight."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_idle(self) -> None:
        """Wait until no build runs in this process."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def in_flight(self) -> list[str]:
        """Ids of the sandboxes being built in this process."""
        return list(self._tasks)
