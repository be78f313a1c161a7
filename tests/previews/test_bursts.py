"""Bursts: requests of one key that arrive while a round is decided wait and are decided together
in the next round, in arrival order; each gets its own outcome (a value or its own exception);
keys do not wait for each other; a caller that left before its round is not decided, one that
left during it has what was decided for it finished (`orphaned`)."""

from __future__ import annotations

import asyncio

import pytest

from midori_preview.previews.bursts import Bursts
from tests.support.waiting import eventually


class Decider:
    """Decides a round when the test opens its gate; records the rounds."""

    def __init__(self) -> None:
        self.rounds: list[tuple[str, list[int]]] = []
        self.gate = asyncio.Event()
        self.orphans: list[tuple[int, str]] = []

    async def decide(self, key: str, items: list[int]) -> list[str | Exception]:
        self.rounds.append((key, items))
        await self.gate.wait()
        return [ValueError(f"odd {i}") if i % 2 else f"{key}:{i}" for i in items]

    async def orphaned(self, item: int, value: str) -> None:
        self.orphans.append((item, value))


async def test_a_burst_is_decided_in_rounds_in_arrival_order() -> None:
    d = Decider()
    bursts: Bursts[int, str] = Bursts(d.decide, orphaned=d.orphaned)
    first = asyncio.ensure_future(bursts.submit("u", 0))
    await eventually(lambda: len(d.rounds) == 1, what="the first round started")
    rest = [asyncio.ensure_future(bursts.submit("u", i)) for i in (2, 3, 4)]
    other = asyncio.ensure_future(bursts.submit("v", 8))  # another key: its own rounds
    await eventually(lambda: bursts.waiting("u") == 4, what="three queued behind the round")
    await eventually(lambda: ("v", [8]) in d.rounds, what="the other key not held up")

    d.gate.set()
    assert await first == "u:0"
    assert await rest[0] == "u:2"
    with pytest.raises(ValueError, match="odd 3"):  # its own outcome; the next still gets its
        await rest[1]
    assert await rest[2] == "u:4"
    assert await other == "v:8"
    assert [items for key, items in d.rounds if key == "u"] == [[0], [2, 3, 4]]
    assert bursts.waiting("u") == 0


async def test_a_caller_gone_before_its_round_is_skipped_and_during_it_is_finished() -> None:
    d = Decider()
    bursts: Bursts[int, str] = Bursts(d.decide, orphaned=d.orphaned)
    during = asyncio.ensure_future(bursts.submit("u", 0))
    await eventually(lambda: len(d.rounds) == 1, what="the first round started")
    before = asyncio.ensure_future(bursts.submit("u", 2))
    kept = asyncio.ensure_future(bursts.submit("u", 4))
    await eventually(lambda: bursts.waiting("u") == 3, what="two queued")
    before.cancel()
    during.cancel()
    d.gate.set()
    assert await kept == "u:4"
    assert d.rounds == [("u", [0]), ("u", [4])]  # the one gone before its round: not decided
    await eventually(lambda: d.orphans == [(0, "u:0")], what="the decided one finished")
