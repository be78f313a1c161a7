"""The sandbox state table: the derived sets say what the table says, every pipeline path from
`requested` to `running` is allowed, every state can end, terminal states have no exits, and
`check()` refuses any move the table does not hold."""

from __future__ import annotations

import itertools
from collections import deque

import pytest

from midori_preview.previews.states import (
    BUILDING,
    HOLDING,
    LIVE,
    SETTLED,
    TERMINAL,
    TRANSITIONS,
    IllegalTransition,
    SandboxStatus,
    allowed,
    check,
)

S = SandboxStatus
ALL = frozenset(SandboxStatus)
PIPELINE = (S.REQUESTED, S.CREATING, S.UPLOADING, S.INSTALLING, S.BUILDING, S.STARTING, S.RUNNING)
# A files/git preview may skip install and build; every combination is a real path.
PATHS = [
    (S.REQUESTED, S.CREATING, S.UPLOADING, *steps, S.STARTING, S.RUNNING)
    for steps in ((), (S.INSTALLING,), (S.BUILDING,), (S.INSTALLING, S.BUILDING))
]


def reachable(start: SandboxStatus) -> set[SandboxStatus]:
    seen, todo = {start}, deque([start])
    while todo:
        for target in TRANSITIONS[todo.popleft()]:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def test_the_table_covers_every_state_and_names_only_states() -> None:
    assert set(TRANSITIONS) == ALL
    for source, targets in TRANSITIONS.items():
        assert targets <= ALL, source
        assert source not in targets, f"{source} moves to itself"


def test_states_are_their_stored_strings() -> None:
    # Rows keep the plain string: the enum must read and write exactly it.
    assert [s.value for s in PIPELINE] == [
        "requested", "creating", "uploading", "installing", "building", "starting", "running",
    ]  # fmt: skip
    assert {s.value for s in ALL - set(PIPELINE)} == {"stopping", "stopped", "error"}
    assert SandboxStatus("running") is S.RUNNING and f"{S.RUNNING}" == "running"


def test_the_derived_sets() -> None:
    assert {S.STOPPED, S.ERROR} == TERMINAL
    assert set(PIPELINE) == LIVE
    assert set(PIPELINE) - {S.RUNNING} == BUILDING
    assert LIVE | {S.STOPPING} == HOLDING
    assert {S.RUNNING, S.STOPPED, S.ERROR} == SETTLED
    # Every state is exactly one of: live, stopping, terminal.
    assert LIVE | {S.STOPPING} | TERMINAL == ALL
    assert not LIVE & TERMINAL and S.STOPPING not in LIVE | TERMINAL


@pytest.mark.parametrize("path", PATHS, ids=lambda p: "→".join(p))
def test_every_pipeline_path_is_allowed(path: tuple[SandboxStatus, ...]) -> None:
    for source, target in itertools.pairwise(path):
        assert allowed(source, target), f"{source} → {target}"
    assert check(path[-2:-1], path[-1]) == (S.STARTING,)


def test_the_pipeline_only_moves_forward() -> None:
    for i, source in enumerate(PIPELINE):
        for earlier in PIPELINE[: i + 1]:
            assert not allowed(source, earlier), f"{source} → {earlier}"


def test_every_state_is_reachable_and_every_state_can_end() -> None:
    assert reachable(S.REQUESTED) == ALL
    for state in ALL:
        assert reachable(state) & TERMINAL, f"{state} can never end"


def test_terminal_states_have_no_exits() -> None:
    for state in TERMINAL:
        assert TRANSITIONS[state] == frozenset()
        assert not any(allowed(state, target) for target in ALL)


def test_how_each_state_may_end() -> None:
    for state in LIVE:
        assert allowed(state, S.STOPPING) and allowed(state, S.STOPPED), state
    for state in BUILDING:  # a step failed, timed out or lost its lease
        assert allowed(state, S.ERROR), state
    assert not allowed(S.RUNNING, S.ERROR), "a running preview is stopped, never failed"
    assert TRANSITIONS[S.STOPPING] == {S.STOPPED}


def test_check_returns_the_sources_when_every_move_is_allowed() -> None:
    sources = (s for s in BUILDING)  # any iterable, read once
    assert set(check(sources, S.ERROR)) == BUILDING
    assert check([], S.RUNNING) == ()


@pytest.mark.parametrize(
    ("sources", "target"),
    [
        ([S.RUNNING], S.ERROR),
        ([S.STOPPED], S.RUNNING),
        ([S.ERROR], S.STOPPING),
        ([S.STOPPING], S.RUNNING),
        ([S.BUILDING], S.UPLOADING),
        ([S.REQUESTED], S.RUNNING),
        ([S.STARTING, S.RUNNING], S.ERROR),  # one bad source spoils the set
    ],
)
def test_check_refuses_a_move_the_table_does_not_hold(
    sources: list[SandboxStatus], target: SandboxStatus
) -> None:
    with pytest.raises(IllegalTransition, match=f"→ {target}"):
        check(sources, target)
