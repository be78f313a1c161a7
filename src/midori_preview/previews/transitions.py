"""Every change of a sandbox's state goes through `Transitions.move`: checked against the state
table (`states.TRANSITIONS`), written as one compare-and-set in the repository, and announced as
a `status` event. The pipeline's steps, stops, reaping, failed and lost builds, closes of rows
whose provider sandbox is gone, and GitHub's teardown (a stop) all come here; the reaper's
batches through `move_many` (one statement and one event round trip for many rows)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from midori_preview.clock import Clock
from midori_preview.db.sandbox_batches import transition_many
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.db.usage import LedgerEntry
from midori_preview.events import EventBus
from midori_preview.observability.metrics import record_moved
from midori_preview.previews import states
from midori_preview.previews.states import SandboxStatus


class Transitions:
    def __init__(self, *, sandboxes: SandboxRepository, events: EventBus, clock: Clock) -> None:
        self.sandboxes = sandboxes
        self.events = events
        self.clock = clock

    async def created(self, sandbox_id: str) -> None:
        """Announce a new row (inserted in the first state, `requested`)."""
        await self.events.publish(sandbox_id, "status", {"status": SandboxStatus.REQUESTED})

    async def move(
        self,
        sandbox_id: str,
        sources: Iterable[SandboxStatus],
        target: SandboxStatus,
        *,
        now: datetime | None = None,
        expect: Mapping[str, Any] | None = None,
        entries: Sequence[LedgerEntry] = (),
        announce: Mapping[str, Any] | None = None,
        before_announce: Callable[[], Awaitable[None]] | None = None,
        **fields: Any,
    ) -> bool:
        """Move the row from one of `sources` to `target` if it is still in it (and the `expect`ed
        columns still hold, None = NULL), writing `fields` and charging `entries` with it: True
        when this caller moved it. `before_announce` runs once moved, before the event is
        published (free what the row held); `announce` adds to the event's `status`.
        Raises `states.IllegalTransition` for a move the table does not allow (a bug)."""
        moved = await self.sandboxes.transition(
            sandbox_id,
            from_status=states.check(sources, target),
            to_status=target,
            now=now or self.clock.now(),
            expect=expect,
            entries=entries,
            **fields,
        )
        if moved:
            record_moved(target, fields, announce, entries)
            if before_announce is not None:
                await before_announce()
            await self.events.publish(sandbox_id, "status", {"status": target, **(announce or {})})
        return moved

    async def move_many(
        self,
        rows: Sequence[tuple[str, SandboxStatus]],
        target: SandboxStatus,
        *,
        now: datetime | None = None,
        expect: Mapping[str, Mapping[str, Any]] | None = None,
        announce: Mapping[str, Any] | None = None,
        before_announce: Callable[[list[str]], Awaitable[None]] | None = None,
        **fields: Any,
    ) -> list[str]:
        """`move` for many rows at once: each of `rows` (id, its state as read) moves only if it
        is still in that state (and each `expect`ed column still holds the value given for its
        id) — one compare-and-set per row in one statement. The ids moved; for each, what
        `move` does: the metrics, then `before_announce` (once, with all of them), then its
        `status` event (all in one round trip)."""
        if not rows:
            return []
        states.check({status for _, status in rows}, target)
        moved = await transition_many(
            self.sandboxes.db,
            rows,
            to_status=target,
            now=now or self.clock.now(),
            expect=expect,
            **fields,
        )
        for _ in moved:
            record_moved(target, fields, announce, ())
        if moved and before_announce is not None:
            await before_announce(moved)
        event = {"status": target, **(announce or {})}
        await self.events.publish_many("status", [(sandbox_id, event) for sandbox_id in moved])
        return moved
