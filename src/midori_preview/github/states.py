"""What a pull request's (or branch's) preview is, as the GitHub integration tracks it and its
comment says: a state machine of its own, beside the sandbox's (`previews/states.py`)."""

from __future__ import annotations

import enum


class GitHubState(enum.StrEnum):
    WAITING = "waiting"  # a fork's PR, until a maintainer adds the label
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    CLOSED = "closed"  # the PR was closed: its preview torn down


# The states whose preview may still become or be live.
ACTIVE: frozenset[GitHubState] = frozenset({GitHubState.BUILDING, GitHubState.READY})
