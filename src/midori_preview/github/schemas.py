"""Request and response bodies of the GitHub routes (camelCase on the wire)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from midori_preview.previews.schemas import EXAMPLE_SANDBOX_ID, Camel, FileIn, bounded_json


class RepoCreateIn(Camel):
    """Where the files come from — one of:
    `sandboxId` (your running preview), `projectId` alone (your newest running preview of that
    project), or `projectId` with `promptJson` (+ `template`) or `files` (rendered exactly as a
    preview would be)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"sandboxId": EXAMPLE_SANDBOX_ID, "name": "cafe-site"},
                {
                    "projectId": "demo-cafe",
                    "name": "baan-kafae",
                    "org": "octo-org",
                    "private": False,
                    "description": "The Baan Kafae site, built with Midori",
                },
                {
                    "projectId": "hello",
                    "files": [{"path": "index.html", "content": "<h1>Hello</h1>"}],
                    "name": "hello-site",
                },
            ]
        }
    )

    sandbox_id: str | None = Field(None, min_length=1, max_length=64)
    project_id: str | None = Field(
        None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:@-]+$"
    )
    prompt_json: dict[str, Any] | None = None
    template: Literal["static", "vite"] | None = None
    files: list[FileIn] | None = None
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$")
    org: str | None = Field(None, max_length=39, pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]*)$")
    private: bool = True
    description: str | None = Field(None, max_length=350)

    @field_validator("prompt_json")
    @classmethod
    def _prompt_json(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else bounded_json(value)

    @field_validator("name")
    @classmethod
    def _repo_name(cls, value: str) -> str:
        if value.startswith("-") or value in (".", "..") or value.lower().endswith(".git"):
            raise ValueError("not a usable repository name")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> RepoCreateIn:
        if (self.sandbox_id is None) == (self.project_id is None):
            raise ValueError("give exactly one of sandboxId or projectId")
        if self.sandbox_id is not None and (self.prompt_json is not None or self.files):
            raise ValueError("promptJson/files go with projectId, not sandboxId")
        if self.prompt_json is not None and self.files is not None:
            raise ValueError("give promptJson or files, not both")
        if self.template is not None and self.prompt_json is None:
            raise ValueError("template goes with promptJson")
        return self


class RepoCreated(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "repoUrl": "https://github.com/octocat/cafe-site",
                    "fullName": "octocat/cafe-site",
                    "branch": "preview",
                    "private": True,
                    "commitSha": "3f786850e387550fdab836ed7e6dc881de23001b",
                    "files": 4,
                }
            ]
        }
    )

    repo_url: str
    full_name: str
    branch: str
    private: bool
    commit_sha: str
    files: int


class WebhookReceipt(Camel):
    """`accepted`: the work runs in the background; `duplicate`: this delivery id was seen
    before; `ignored`: nothing to do, `reason` says why (`action`, `fork`, `not_allowlisted` …)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"outcome": "accepted", "reason": None},
                {"outcome": "duplicate", "reason": None},
                {"outcome": "ignored", "reason": "fork"},
            ]
        }
    )

    outcome: Literal["accepted", "duplicate", "ignored"]
    reason: str | None = None
