"""The sandbox provider port: a narrow async protocol that both Daytona and local sandboxes serve.

Providers know nothing of HTTP, the database or users' quotas. They create a sandbox, put files in
it, run commands, start the long-running server, hand out preview links, list what they run by
label and delete. Errors form a small tree so that callers can tell retryable from final failures
without ever seeing vendor text.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from midori_preview.errors import ServiceError

# Called with one line of output and the stream it came from ("stdout" / "stderr").
OutputCallback = Callable[[str, str], Awaitable[None]]


class ProviderState(enum.StrEnum):
    """What a provider says about one of its sandboxes, mapped from its own vocabulary."""

    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What the service asks a provider to create."""

    sandbox_id: str  # our id; providers label their sandbox with it
    user_id: str
    project_id: str
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProviderSandbox:
    """A handle on a created sandbox. `workdir` is where files go and commands run."""

    provider: str
    provider_id: str
    sandbox_id: str
    workdir: str


@dataclass(frozen=True, slots=True)
class ProviderSandboxInfo:
    """One entry of `list_sandboxes`: enough to reconcile with the database."""

    provider_id: str
    sandbox_id: str | None  # our id, read back from the labels; None when unlabeled
    labels: Mapping[str, str]
    state: ProviderState
    created_at: datetime | None
    error_reason: str | None = None


@dataclass(frozen=True, slots=True)
class FileData:
    """One file to upload: a relative, already validated path and its exact bytes."""

    path: str
    content: bytes


@dataclass(frozen=True, slots=True)
class GitCredentials:
    """Credentials for a git clone: handed to git as credentials, never put in a URL, an argv,
    a config file, a log or the sandbox's environment."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class ExecResult:
    exit_code: int
    output_tail: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class PreviewLink:
    """How to reach a port of a sandbox on the provider's own terms.

    `url` needs `token` in the `x-daytona-preview-token` header; `open_url` carries its own
    short-lived credential (a signed URL). Callers of the service never see these: they get the
    service's own preview hosts and credentials (`gateway`).
    """

    url: str
    token: str
    open_url: str
    open_url_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where the service's preview gateway forwards a sandbox's preview traffic: a base URL (the
    request's path is appended to its path) and the headers that authorize the gateway there
    (Daytona's preview token…). Both stay inside the service: never shown, never logged."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)


# --- errors -----------------------------------------------------------------------------------


class ProviderError(ServiceError):
    """Base of provider failures: `code` is ours and safe to show; never vendor text."""

    code = "provider_error"
    retryable = False
    # Provider ids of sandboxes the failed call made but could not delete (a create that timed
    # out while Daytona answered 409 to its deletes): the caller hands them to the reaper.
    leftovers: tuple[str, ...] = ()

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    """Could not reach the provider, or it answered 5xx / 429 past the retry budget."""

    code = "provider_unavailable"
    retryable = True


class ProviderRejected(ProviderError):
    """The provider refused the request (4xx other than 404/429); retrying will not help."""

    code = "provider_rejected"


class ProviderQuota(ProviderError):
    """The provider account is out of capacity (quota / resource limits)."""

    code = "provider_quota"


class ProviderNotFound(ProviderError):
    """The sandbox does not exist at the provider (any more)."""

    code = "provider_not_found"


class ProviderTimeout(ProviderError):
    """An operation did not finish in its time budget."""

    code = "provider_timeout"
    retryable = True


class CommandTimeout(ProviderError):
    """A command in the sandbox ran past its timeout and was killed."""

    code = "command_timeout"


class ServerExited(ProviderError):
    """The preview server's process ended while it was expected to serve."""

    code = "server_exited"

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class SandboxFailed(ProviderError):
    """The provider reports the sandbox itself in an error state."""

    code = "sandbox_failed"


# --- the port -----------------------------------------------------------------------------------


@runtime_checkable
class SandboxProvider(Protocol):
    """The narrow port every provider implements. All methods are safe to call concurrently."""

    name: str
    # Seconds between readiness probes of a starting server: a probe is cheap on a loopback,
    # a request through the provider's proxy elsewhere.
    probe_interval: float

    async def create(self, spec: SandboxSpec, *, timeout: float) -> ProviderSandbox:
        """Create and start a sandbox; on timeout nothing it made may be left behind."""
        ...

    def attach(self, provider_id: str, sandbox_id: str) -> ProviderSandbox:
        """A handle on a sandbox this provider created earlier, from the ids stored with it (no
        call to the provider): what every operation on an existing sandbox starts from."""
        ...

    async def upload(self, sandbox: ProviderSandbox, files: Sequence[FileData]) -> None:
        """Write all files into the sandbox's workdir in one bulk operation, byte-exact."""
        ...

    async def exec(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> ExecResult:
        """Run a shell command line in the workdir; CommandTimeout past `timeout`."""
        ...

    async def start_server(
        self,
        sandbox: ProviderSandbox,
        command: str,
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        on_output: OutputCallback | None = None,
    ) -> None:
        """Start the long-running server in the background; its output streams to `on_output`."""
        ...

    async def clone(
        self,
        sandbox: ProviderSandbox,
        url: str,
        ref: str | None,
        *,
        timeout: float,
        credentials: GitCredentials | None = None,
    ) -> None:
        """Clone `url` at `ref` (a branch, a tag or a full commit id; None = the default branch)
        into the workdir."""
        ...

    async def keep_alive(self, sandbox: ProviderSandbox) -> bool:
        """Reset the provider's own idle clock for a watched sandbox. False when the provider
        keeps no such clock (nothing was done)."""
        ...

    async def probe(self, sandbox: ProviderSandbox, port: int, *, timeout: float) -> bool:
        """One attempt to reach the server on `port`; True when it answered an HTTP request.
        Raises ServerExited when the provider knows the server is gone."""
        ...

    async def preview_link(
        self, sandbox: ProviderSandbox, port: int, *, open_url_ttl_seconds: int
    ) -> PreviewLink:
        """The provider's own preview URL + token for `port`, and its own signed URL. The service
        hands none of them out (its gateway serves every preview, see `upstream`)."""
        ...

    async def upstream(self, sandbox: ProviderSandbox, port: int) -> Upstream:
        """Where the gateway reaches the server on `port` (base URL + the headers that authorize
        the gateway there). At most one provider call; the service stores the answer with the
        sandbox so that any replica serves its preview without asking again."""
        ...

    async def delete(self, sandbox: ProviderSandbox) -> None:
        """Stop and remove the sandbox with everything in it; a sandbox already gone is success."""
        ...

    async def list_sandboxes(self, labels: Mapping[str, str]) -> list[ProviderSandboxInfo]:
        """Every sandbox this provider runs that carries all of `labels`."""
        ...

    async def aclose(self) -> None:
        """Release clients and background tasks (the app's lifespan calls this once)."""
        ...
