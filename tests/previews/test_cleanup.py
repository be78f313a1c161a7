"""A build's cleanup runs to its end even when the build is cancelled meanwhile (a stop cancels
the build, possibly while it is already deleting what it made): the cancellation waits for it."""

from __future__ import annotations

import asyncio

import pytest

from midori_preview.previews.pipeline import to_the_end


async def test_a_cancelled_build_finishes_its_cleanup_then_is_cancelled() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def cleanup() -> None:
        started.set()
        await release.wait()  # e.g. waiting for the sandbox's processes to exit
        done.append("deleted")

    build = asyncio.create_task(to_the_end(cleanup()))
    await started.wait()
    build.cancel()  # the stop's cancellation lands mid-cleanup…
    await asyncio.sleep(0)
    build.cancel()  # …twice, even
    await asyncio.sleep(0)
    assert not build.done()  # still cleaning up
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await build
    assert done == ["deleted"]


async def test_an_uncancelled_cleanup_returns_and_reports_its_own_error() -> None:
    async def cleanup() -> None:
        raise RuntimeError("delete failed")

    with pytest.raises(RuntimeError, match="delete failed"):
        await to_the_end(cleanup())
