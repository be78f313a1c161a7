"""Request and response bodies (camelCase on the wire)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from midori_preview.previews.states import SandboxStatus

S = SandboxStatus

# A sandbox's state on the wire: one of the enum's values, documented inline as their list (as the
# API has always shown it). Typed `str` on purpose: an Enum annotation would add a schema
# component of its own to the OpenAPI document.
Status = Annotated[
    str,
    AfterValidator(SandboxStatus),
    WithJsonSchema({"enum": [s.value for s in SandboxStatus], "title": "Status", "type": "string"}),
]

# Example values shown in the OpenAPI document (/docs).
EXAMPLE_SANDBOX_ID = "k3xq7mzp2ab4cdef"
EXAMPLE_PREVIEW_URL = f"http://3000-{EXAMPLE_SANDBOX_ID}.preview.localhost:8000/"
EXAMPLE_STATUS_URL = f"/api/preview/daytona/status?sandboxId={EXAMPLE_SANDBOX_ID}"
EXAMPLE_EVENTS_URL = f"/api/preview/daytona/events?sandboxId={EXAMPLE_SANDBOX_ID}"
EXAMPLE_USAGE: dict[str, Any] = {
    "usedSecondsToday": 754,
    "remainingSecondsToday": 2846,
    "warning": None,
    "day": "2025-06-12",
    "resetAt": "2025-06-13T00:00:00Z",
}


# How deeply a promptJson may nest objects and arrays. A real one is a handful of levels; the
# bound keeps every later step (serializing, hashing, rendering) far from the nesting limits of
# pydantic (~250 levels) and of Python's recursion.
MAX_PROMPT_DEPTH = 64


def unicode_text(value: str) -> str:
    """`value`, unless it holds a lone surrogate (JSON can escape one, `"\\ud800"`, but it is no
    Unicode text: it cannot be hashed, written or rendered as UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (a lone surrogate)") from None
    return value


def bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    """A promptJson: nested at most MAX_PROMPT_DEPTH levels, every key and string Unicode text.
    (Iterative: a deep document must not exhaust the recursion of its own check.)"""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_PROMPT_DEPTH:
            raise ValueError(f"nested deeper than {MAX_PROMPT_DEPTH} levels")
        if isinstance(node, dict):
            for key in node:
                unicode_text(key)
            children = list(node.values())
        else:
            children = node
        for child in children:
            if isinstance(child, str):
                unicode_text(child)
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return value


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class FileIn(Camel):
    path: str = Field(min_length=1, max_length=1024)
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        return unicode_text(value)


class GitIn(Camel):
    url: str = Field(min_length=1, max_length=2048)
    ref: str | None = Field(None, max_length=255)


class CreatePreview(Camel):
    """Exactly one source: `promptJson` (+ `template`), `files` or `git`."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "projectId": "demo-cafe",
                    "promptJson": {"name": "บ้านกาแฟ Baan Kafae", "sections": []},
                    "template": "static",
                },
                {
                    "projectId": "hello",
                    "files": [{"path": "index.html", "content": "<h1>Hello</h1>"}],
                },
                {
                    "projectId": "repo",
                    "git": {"url": "https://github.com/owner/site.git", "ref": "main"},
                    "install": "npm ci",
                    "build": "npm run build",
                    "start": "npx serve -l $PORT dist",
                    "port": 3000,
                },
            ]
        },
    )

    project_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$")
    prompt_json: dict[str, Any] | None = None
    template: Literal["static", "vite"] | None = None
    files: list[FileIn] | None = None
    git: GitIn | None = None
    install: str | None = Field(None, max_length=4000)
    build: str | None = Field(None, max_length=4000)
    start: str | None = Field(None, max_length=4000)
    port: int | None = Field(None, ge=1024, le=65535)
    replace: bool = False

    @field_validator("prompt_json")
    @classmethod
    def _prompt_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else bounded_json(value)

    @model_validator(mode="after")
    def _one_source(self) -> CreatePreview:
        given = [n for n in ("prompt_json", "files", "git") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one source: promptJson, files or git")
        if self.prompt_json is not None:
            if any(v is not None for v in (self.install, self.build, self.start, self.port)):
                raise ValueError("install/build/start/port go with files or git, not promptJson")
        elif self.template is not None:
            raise ValueError("template goes with promptJson")
        return self


class UpdateSource(Camel):
    """A running preview's new source: `promptJson` (+ `template`), or `files` (+ `deletions`,
    and the commands and port of create, which must match the preview's own)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"promptJson": {"name": "บ้านกาแฟ Baan Kafae", "sections": []}},
                {
                    "files": [{"path": "index.html", "content": "<h1>Hello again</h1>"}],
                    "deletions": ["old.html"],
                },
            ]
        },
    )

    prompt_json: dict[str, Any] | None = None
    template: Literal["static", "vite"] | None = None
    files: list[FileIn] | None = None
    deletions: list[Annotated[str, Field(min_length=1, max_length=1024)]] | None = Field(
        None, max_length=2000
    )
    install: str | None = Field(None, max_length=4000)
    build: str | None = Field(None, max_length=4000)
    start: str | None = Field(None, max_length=4000)
    port: int | None = Field(None, ge=1024, le=65535)

    @field_validator("prompt_json")
    @classmethod
    def _prompt_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else bounded_json(value)

    @model_validator(mode="after")
    def _one_source(self) -> UpdateSource:
        if (self.prompt_json is None) == (self.files is None and self.deletions is None):
            raise ValueError("give exactly one source: promptJson, or files (and/or deletions)")
        if self.prompt_json is not None:
            if any(v is not None for v in (self.install, self.build, self.start, self.port)):
                raise ValueError("install/build/start/port go with files, not promptJson")
        elif self.template is not None:
            raise ValueError("template goes with promptJson")
        return self


class SourceUpdated(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sandboxId": EXAMPLE_SANDBOX_ID,
                    "version": 3,
                    "updatedAt": "2025-06-12T09:41:00Z",
                    "changed": True,
                    "superseded": False,
                    "uploaded": ["index.html", "styles.css", "prompt.json"],
                    "deleted": [],
                    "rebuilt": False,
                }
            ]
        }
    )

    sandbox_id: str
    version: int = Field(description="The version the preview serves now.")
    updated_at: datetime | None = Field(description="When that version went live.")
    changed: bool = Field(description="False: the preview already served this source.")
    superseded: bool = Field(
        False, description="A newer update of the same preview came meanwhile and won."
    )
    uploaded: list[str] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
    rebuilt: bool = False


class Created(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sandboxId": EXAMPLE_SANDBOX_ID,
                    "projectId": "demo-cafe",
                    "status": S.REQUESTED,
                    "statusUrl": EXAMPLE_STATUS_URL,
                    "eventsUrl": EXAMPLE_EVENTS_URL,
                    "heartbeatIntervalSeconds": 120,
                }
            ]
        }
    )

    sandbox_id: str
    project_id: str
    status: Status
    status_url: str
    events_url: str
    heartbeat_interval_seconds: int


class StopIn(Camel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"sandboxId": EXAMPLE_SANDBOX_ID}]})

    sandbox_id: str = Field(min_length=1, max_length=64)


class HeartbeatIn(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sandboxId": EXAMPLE_SANDBOX_ID, "visible": True},
                {"sandboxId": EXAMPLE_SANDBOX_ID, "visible": False},
            ]
        }
    )

    sandbox_id: str = Field(min_length=1, max_length=64)
    visible: bool = True


class Usage(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                EXAMPLE_USAGE,
                {
                    **EXAMPLE_USAGE,
                    "usedSecondsToday": 3420,
                    "remainingSecondsToday": 180,
                    "warning": "quota_low",
                },
            ]
        }
    )

    used_seconds_today: int
    remaining_seconds_today: int
    warning: Literal["quota_low"] | None = None
    day: str
    reset_at: datetime


class StepError(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"step": "build", "code": "step_failed", "message": "build failed", "exitCode": 1}
            ]
        }
    )

    step: str
    code: str  # step_failed | step_timeout | provider_unavailable | provider_rejected | …
    message: str
    exit_code: int | None = None


class PreviewStatus(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sandboxId": EXAMPLE_SANDBOX_ID,
                    "projectId": "demo-cafe",
                    "status": S.RUNNING,
                    "reason": None,
                    "previewUrl": EXAMPLE_PREVIEW_URL,
                    "previewToken": "Ovk7CcrFmu8GrgJv9edRESbrONH-tfwi",
                    "openUrl": f"http://3000-{EXAMPLE_SANDBOX_ID}-toy9wq-"
                    "57maetm7f7747hikiqamqpdb.preview.localhost:8000/",
                    "createdAt": "2025-06-12T09:30:00Z",
                    "readyAt": "2025-06-12T09:30:04Z",
                    "lastHeartbeatAt": "2025-06-12T09:42:04Z",
                    "expiresAt": "2025-06-12T11:30:00Z",
                    "error": None,
                    "logsTail": ['127.0.0.1 - - [12/Jun/2025 09:30:04] "GET / HTTP/1.1" 200 -'],
                    "usage": EXAMPLE_USAGE,
                },
                {
                    "sandboxId": EXAMPLE_SANDBOX_ID,
                    "projectId": "repo",
                    "status": S.ERROR,
                    "reason": "error:build",
                    "previewUrl": None,
                    "previewToken": None,
                    "openUrl": None,
                    "createdAt": "2025-06-12T09:30:00Z",
                    "readyAt": None,
                    "lastHeartbeatAt": None,
                    "expiresAt": "2025-06-12T11:30:00Z",
                    "error": {
                        "step": "build",
                        "code": "step_failed",
                        "message": "build failed",
                        "exitCode": 1,
                    },
                    "logsTail": [
                        "> site@1.0.0 build",
                        "> vite build",
                        'error during build: Could not resolve "./App" from "src/main.tsx"',
                    ],
                    "usage": EXAMPLE_USAGE,
                },
            ]
        }
    )

    sandbox_id: str
    project_id: str
    status: Status
    reason: str | None
    preview_url: str | None = Field(
        description="The service's preview host for programs (send `previewToken` in the "
        "`x-daytona-preview-token` header); set while the preview builds or runs."
    )
    preview_token: str | None = Field(
        description="This preview's own token (the service's, never the provider's)."
    )
    open_url: str | None = Field(
        description="A link for browsers, top-level or in a cross-site iframe: its credential is "
        "in the host name. Set from the start: while the preview builds it shows the build, then "
        "turns into the site; once stopped it says why."
    )
    created_at: datetime
    ready_at: datetime | None
    last_heartbeat_at: datetime | None
    expires_at: datetime
    error: StepError | None
    logs_tail: list[str]
    usage: Usage | None = None
    version: int = Field(1, description="Which version of its source the preview serves.")
    updated_at: datetime | None = Field(
        None, description="When that version went live (None: never updated)."
    )


class HeartbeatOut(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sandboxId": EXAMPLE_SANDBOX_ID,
                    "status": S.RUNNING,
                    "nextHeartbeatSeconds": 120,
                    "usage": EXAMPLE_USAGE,
                }
            ]
        }
    )

    sandbox_id: str
    status: Status
    next_heartbeat_seconds: int
    usage: Usage | None = None
