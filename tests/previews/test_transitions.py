"""Every state change goes through `Transitions.move`: a move the state table does not allow is
refused before the database is touched, and a move announces the new state once."""

from __future__ import annotations

import pytest

from midori_preview.previews.states import IllegalTransition, SandboxStatus
from tests.conftest import Running
from tests.previews.helpers import API, files_body

S = SandboxStatus


async def test_a_move_the_table_forbids_is_refused_and_changes_nothing(
    service_app: Running,
) -> None:
    res = await service_app.client.post(
        API, json=files_body("site", {"index.html": "hi"}), headers={"X-User-Id": "alice"}
    )
    sandbox_id = res.json()["sandboxId"]
    await service_app.wait_until(sandbox_id, "running")
    moves = service_app.service.transitions
    with pytest.raises(IllegalTransition):
        await moves.move(sandbox_id, (S.RUNNING,), S.ERROR)  # a running preview never errors
    with pytest.raises(IllegalTransition):
        await moves.move(sandbox_id, (S.STOPPED,), S.RUNNING)  # nothing leaves a terminal state
    row = await service_app.services.db.sandboxes.get(sandbox_id)
    assert row is not None and row.status == S.RUNNING


async def test_a_move_from_a_state_the_row_left_does_nothing(service_app: Running) -> None:
    res = await service_app.client.post(
        API, json=files_body("site", {"index.html": "hi"}), headers={"X-User-Id": "alice"}
    )
    sandbox_id = res.json()["sandboxId"]
    await service_app.wait_until(sandbox_id, "running")
    before = await service_app.services.events.read(sandbox_id, block_ms=None)
    moved = await service_app.service.transitions.move(sandbox_id, (S.BUILDING,), S.STOPPING)
    assert moved is False
    assert await service_app.services.events.read(sandbox_id, block_ms=None) == before
