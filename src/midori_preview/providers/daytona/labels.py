"""Label values as Daytona takes them, and how Daytona's view of a sandbox reads in our terms
(the label set itself is `providers.labels`)."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from daytona import AsyncSandbox

from midori_preview.providers.base import ProviderSandboxInfo, ProviderState
from midori_preview.providers.labels import LABEL_SANDBOX_ID

_GROUPS: Mapping[ProviderState, str] = {
    ProviderState.STARTING: "creating restoring starting pending_build building_snapshot "
    "pulling_snapshot resuming",
    ProviderState.STARTED: "started resizing snapshotting forking",
    ProviderState.STOPPING: "stopping archiving pausing",
    ProviderState.STOPPED: "stopped archived paused",
    ProviderState.GONE: "destroying destroyed",
    ProviderState.ERROR: "error build_failed",
}
# Daytona's states → ours. A state not listed here (unknown, or new in the API) reads as an error.
DAYTONA_STATES: Mapping[str, ProviderState] = {
    name: ours for ours, names in _GROUPS.items() for name in names.split()
}

_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def label_value(value: str) -> str:
    """Label values are kept to `[A-Za-z0-9._-]`, at most 63 characters."""
    return _LABEL_UNSAFE.sub("_", value)[:63] or "_"


def sandbox_info(sandbox: AsyncSandbox) -> ProviderSandboxInfo:
    """One listed Daytona sandbox, in our terms (our sandbox id comes from its label)."""
    state = sandbox.state.value if isinstance(sandbox.state, enum.Enum) else str(sandbox.state)
    created_at = None
    if sandbox.created_at:
        try:
            created_at = datetime.fromisoformat(sandbox.created_at).astimezone(UTC)
        except ValueError:
            created_at = None
    return ProviderSandboxInfo(
        provider_id=sandbox.id,
        sandbox_id=sandbox.labels.get(LABEL_SANDBOX_ID),
        labels=dict(sandbox.labels),
        state=DAYTONA_STATES.get(state, ProviderState.ERROR),
        created_at=created_at,
        error_reason=sandbox.error_reason[:500] if sandbox.error_reason else None,
    )
