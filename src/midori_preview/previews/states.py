"""The sandbox state machine: every state, every allowed transition, and the sets derived from them.

This is the one module that names the states. Adding a state means adding it to `SandboxStatus`
and to `TRANSITIONS` (and a migration if the column must change); every other module uses the
enum and the derived sets below.

```
requested → creating → uploading → installing → building → starting → running
                                                                        │
   any live state ──(stop / idle / expired / quota / replaced …)──► stopping ──► stopped
   any building state ──(step failed, timed out, lease lost)─────► error
   any live state ──(its provider sandbox is already gone: lost, orphan)──► stopped
```
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class SandboxStatus(enum.StrEnum):
    REQUESTED = "requested"
    CREATING = "creating"
    UPLOADING = "uploading"
    INSTALLING = "installing"
    BUILDING = "building"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


S = SandboxStatus

# Where a build goes next (steps may be skipped: no install, no build …).
_PIPELINE: Mapping[SandboxStatus, frozenset[SandboxStatus]] = {
    S.REQUESTED: frozenset({S.CREATING}),
    S.CREATING: frozenset({S.UPLOADING}),
    S.UPLOADING: frozenset({S.INSTALLING, S.BUILDING, S.STARTING}),
    S.INSTALLING: frozenset({S.BUILDING, S.STARTING}),
    S.BUILDING: frozenset({S.STARTING}),
    S.STARTING: frozenset({S.RUNNING}),
    S.RUNNING: frozenset(),
}

# The allowed transitions: state → the states it may move to. A state with none is terminal.
TRANSITIONS: Mapping[SandboxStatus, frozenset[SandboxStatus]] = {
    **{
        state: nexts
        | {S.STOPPING, S.STOPPED}  # stopped directly: the provider sandbox is already gone
        | ({S.ERROR} if state is not S.RUNNING else frozenset())
        for state, nexts in _PIPELINE.items()
    },
    S.STOPPING: frozenset({S.STOPPED}),
    S.STOPPED: frozenset(),
    S.ERROR: frozenset(),
}

# The pipeline's steps in the order a build takes them (what a building page shows).
STEPS: tuple[SandboxStatus, ...] = tuple(_PIPELINE)

TERMINAL: frozenset[SandboxStatus] = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)
# Live: the sandbox exists (or is being made) and nobody asked it to stop.
LIVE: frozenset[SandboxStatus] = frozenset(
    s for s in SandboxStatus if s not in TERMINAL and s is not S.STOPPING
)
# Building: live and not yet serving (a build lease covers these).
BUILDING: frozenset[SandboxStatus] = frozenset(s for s in LIVE if _PIPELINE.get(s))
# Holding provider resources: live, or stopping (its delete may still be pending).
HOLDING: frozenset[SandboxStatus] = LIVE | {S.STOPPING}
# A build has ended one way or another: serving, or over.
SETTLED: frozenset[SandboxStatus] = TERMINAL | {S.RUNNING}


class IllegalTransition(ValueError):
    """A transition the table does not allow: a bug in the caller, never a user error."""


def allowed(source: SandboxStatus, target: SandboxStatus) -> bool:
    return target in TRANSITIONS[source]


def check(sources: Iterable[SandboxStatus], target: SandboxStatus) -> tuple[SandboxStatus, ...]:
    """`sources` as a tuple, after checking that each may move to `target`."""
    out = tuple(sources)
    for source in out:
        if not allowed(source, target):
            raise IllegalTransition(f"{source} → {target} is not a sandbox transition")
    return out
