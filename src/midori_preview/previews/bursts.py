"""Bursts: one key's (a user's) concurrent requests in this process, decided together.

The first request of a key starts a drainer; requests arriving while it works wait in arrival
order and are handed to `decide` together in its next round. So a burst of N creates by one user
costs one turn of the user's cross-replica lock and one read per round, not N — and each request
is still decided on its own, in order, with what the ones before it did."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Given the key and its waiting items in arrival order: one outcome per item, in the same order
# (a value, or the exception that item is answered with).
Decide = Callable[[str, list[T]], Awaitable[Sequence[R | Exception]]]


class Bursts(Generic[T, R]):
    def __init__(
        self,
        decide: Decide[T, R],
        *,
        orphaned: Callable[[T, R], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """`orphaned(item, value)` finishes what `decide` did for a caller cancelled meanwhile
        (run in the background: what was decided is not left half done)."""
        self._decide = decide
        self._orphaned = orphaned
        self._waiting: dict[str, list[tuple[T, asyncio.Future[R]]]] = {}
        self._deciding: dict[str, int] = {}  # key → items in the round being decided
        self._tasks: set[asyncio.Task[None]] = set()  # drainers and orphan finishers

    def waiting(self, key: str) -> int:
        """How many of `key`'s requests are not answered yet (queued or being decided)."""
        queued = sum(not f.done() for _, f in self._waiting.get(key, []))
        return queued + self._deciding.get(key, 0)

    async def submit(self, key: str, item: T) -> R:
        """Queue `item` behind `key`'s others and return its outcome (or raise it). A caller
        that is cancelled before its turn is dropped from the round (nothing done for it)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        queue = self._waiting.get(key)
        if queue is not None:
            queue.append((item, future))
        else:
            self._waiting[key] = [(item, future)]
            self._spawn(self._drain(key))
        return await future

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, key: str) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while batch := [(i, f) for i, f in self._waiting[key] if not f.done()]:
                self._waiting[key] = []
                self._deciding[key] = len(batch)
                try:
                    outcomes = await self._decide(key, [item for item, _ in batch])
                except Exception as exc:  # the round failed as a whole: each is told so
                    outcomes = [exc] * len(batch)
                finally:
                    self._deciding.pop(key, None)
                for (item, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its caller is gone
                        if self._orphaned is not None and not isinstance(outcome, Exception):
                            self._spawn(self._orphaned(item, outcome))
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:  # done, or cancelled (shutdown): nobody is left waiting on a drainer gone
            for _, future in [*batch, *self._waiting.pop(key, [])]:
                if not future.done():
                    future.cancel()
