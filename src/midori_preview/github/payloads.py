"""What a webhook asks of us: build a commit, tear a preview down, or nothing — decided from the
payload after strict validation. Repository names, refs and commits that do not look exactly like
GitHub's are refused; no URL from the payload is ever used."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any

from midori_preview.previews.sources import SAFE_REF

OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
REPO_NAME = re.compile(r"^(?!-)[A-Za-z0-9._-]{1,100}$")
SHA = re.compile(r"^[0-9a-f]{40}$")
ZERO_SHA = "0" * 40
BUILD_ACTIONS = frozenset({"opened", "reopened", "synchronize"})


@dataclass(frozen=True, slots=True)
class Policy:
    allowlist: list[str]
    build_forks: bool
    push_branches: list[str]
    fork_label: str = "preview"  # a maintainer's go-ahead for a stranger's fork PR


@dataclass(frozen=True, slots=True)
class Target:
    """A previewed thing: a pull request (`pr:<n>`) or a branch (`branch:<name>`) of a repo."""

    repo: str  # owner/name of the base repository
    key: str
    pr_number: int | None = None
    branch: str | None = None

    @staticmethod
    def pull(repo: str, number: int) -> Target:
        return Target(repo, f"pr:{number}", pr_number=number)

    @staticmethod
    def of_branch(repo: str, branch: str) -> Target:
        return Target(repo, f"branch:{branch}", branch=branch)


@dataclass(frozen=True, slots=True)
class Build:
    target: Target
    source_repo: str  # the repository the commit is cloned from (a fork's, for fork PRs)
    sha: str
    ref: str  # head branch, for people
    installation_id: int | None
    event_at: datetime | None
    fork: bool = False  # from a repository other than the base: its author may be a stranger
    author: str | None = None  # the PR's author (login)
    labels: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Close:
    target: Target
    reason: str  # pr_closed | branch_deleted
    installation_id: int | None
    event_at: datetime | None


@dataclass(frozen=True, slots=True)
class Ignore:
    reason: str


Decision = Build | Close | Ignore


def valid_full_name(value: Any) -> str | None:
    """`owner/name` exactly as GitHub allows it, else None (`../x`, `a/b/c`, `-x/y` …)."""
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    owner, name = value.split("/")
    if not OWNER.fullmatch(owner) or not REPO_NAME.fullmatch(name) or name in (".", ".."):
        return None
    if "--" in owner or name.lower().endswith(".git"):
        return None
    return value


def valid_ref(value: Any) -> str | None:
    # fullmatch: `$` in the patterns would also accept a trailing newline.
    if not isinstance(value, str) or not SAFE_REF.fullmatch(value) or value.startswith("-"):
        return None
    return value


def valid_sha(value: Any) -> str | None:
    return value if isinstance(value, str) and SHA.fullmatch(value) and value != ZERO_SHA else None


def allowed(full_name: str, patterns: list[str]) -> bool:
    name = full_name.lower()
    return any(fnmatchcase(name, p.strip().lower()) for p in patterns if p.strip())


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _installation(payload: dict[str, Any]) -> int | None:
    inst = _dict(payload.get("installation")).get("id")
    return inst if isinstance(inst, int) and not isinstance(inst, bool) else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def decide(event: str, payload: dict[str, Any], policy: Policy) -> Decision:
    """The one thing this delivery asks for (most deliveries: nothing)."""
    if event == "pull_request":
        return _pull_request(payload, policy)
    if event == "push":
        return _push(payload, policy)
    return Ignore("event")


def _base_repo(payload: dict[str, Any], policy: Policy) -> str | Ignore:
    repo = valid_full_name(_dict(payload.get("repository")).get("full_name"))
    if repo is None:
        return Ignore("invalid_repository")
    if not allowed(repo, policy.allowlist):
        return Ignore("not_allowlisted")
    return repo


def _pull_request(payload: dict[str, Any], policy: Policy) -> Decision:
    action = payload.get("action")
    if action not in BUILD_ACTIONS and action not in ("closed", "labeled"):
        return Ignore("action")
    if action == "labeled" and _dict(payload.get("label")).get("name") != policy.fork_label:
        return Ignore("action")
    repo = _base_repo(payload, policy)
    if isinstance(repo, Ignore):
        return repo
    pr = _dict(payload.get("pull_request"))
    number = pr.get("number", payload.get("number"))
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 2**31:
        return Ignore("invalid_number")
    target = Target.pull(repo, number)
    event_at = _time(pr.get("updated_at"))
    if action == "closed":
        return Close(target, "pr_closed", _installation(payload), event_at)
    if pr.get("state") != "open":
        return Ignore("not_open")
    head = _dict(pr.get("head"))
    head_repo = _dict(head.get("repo"))
    source = valid_full_name(head_repo.get("full_name"))
    sha, ref = valid_sha(head.get("sha")), valid_ref(head.get("ref"))
    if source is None:
        return Ignore("invalid_head_repository")
    if sha is None or ref is None:
        return Ignore("invalid_ref")
    fork = bool(head_repo.get("fork")) or source.lower() != repo.lower()
    if fork and not policy.build_forks:
        return Ignore("fork")
    if action == "labeled" and not fork:
        return Ignore("action")  # the label gates forks only
    author = _dict(pr.get("user")).get("login")
    labels = tuple(
        str(label.get("name")) for label in pr.get("labels") or [] if isinstance(label, dict)
    )
    return Build(
        target,
        source,
        sha,
        ref,
        _installation(payload),
        event_at,
        fork=fork,
        author=author if isinstance(author, str) and OWNER.fullmatch(author) else None,
        labels=labels,
    )


def _push(payload: dict[str, Any], policy: Policy) -> Decision:
    ref = payload.get("ref")
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return Ignore("not_a_branch")
    branch = valid_ref(ref.removeprefix("refs/heads/"))
    if branch is None:
        return Ignore("invalid_ref")
    if not any(fnmatchcase(branch, p) for p in policy.push_branches):
        return Ignore("branch_not_configured")
    repo = _base_repo(payload, policy)
    if isinstance(repo, Ignore):
        return repo
    target = Target.of_branch(repo, branch)
    installation = _installation(payload)
    if payload.get("deleted") is True or payload.get("after") == ZERO_SHA:
        return Close(target, "branch_deleted", installation, None)
    sha = valid_sha(payload.get("after"))
    if sha is None:
        return Ignore("invalid_ref")
    # No ordering guard for pushes: commit timestamps say nothing about push order.
    return Build(target, repo, sha, branch, installation, None)
