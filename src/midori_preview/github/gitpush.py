"""Preview repositories: create a GitHub repository and push a project's files (plus a README) on
branch `preview`.

Git runs through `providers.git.Git`: the token reaches it only through its environment, handed
over by `GIT_ASKPASS`. The remote URL, every argv, `.git/config` and the logs never carry it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from redis.exceptions import RedisError

from midori_preview.errors import (
    PayloadTooLarge,
    PreviewError,
    RateLimited,
    SandboxNotFound,
    SandboxNotRunning,
    ValidationFailed,
)
from midori_preview.github.client import (
    GitHubAuthFailed,
    GitHubClient,
    GitHubError,
    GitHubNotFound,
    GitHubRateLimited,
    GitHubRejected,
)
from midori_preview.github.errors import GitHubCallFailed, GitHubUnconfigured, RepoPushFailed
from midori_preview.github.payloads import valid_full_name
from midori_preview.github.schemas import RepoCreated, RepoCreateIn
from midori_preview.logging import get_logger
from midori_preview.previews.schemas import CreatePreview
from midori_preview.previews.service import PreviewService
from midori_preview.previews.sources import plan_for, validate_path
from midori_preview.previews.states import SandboxStatus
from midori_preview.providers.base import (
    FileData,
    GitCredentials,
    ProviderError,
)
from midori_preview.providers.files import (
    ArchiveLimits,
    ArchiveReadFailed,
    ArchiveTooLarge,
    EmptyArchive,
    UnsafeArchive,
    UnsafePath,
    read_archive,
    write_files,
)
from midori_preview.providers.git import Git, GitFailed, GitTimeout
from midori_preview.settings import Settings

log = get_logger(__name__)

GIT = "git"  # resolved on git's PATH; tests point it at a recording wrapper
BRANCH = "preview"
PUSH_USERNAME = "x-access-token"  # how GitHub takes an app or personal token over HTTPS
AUTHOR = {
    "GIT_AUTHOR_NAME": "midori-preview",
    "GIT_AUTHOR_EMAIL": "midori-preview@users.noreply.github.com",
    "GIT_COMMITTER_NAME": "midori-preview",
    "GIT_COMMITTER_EMAIL": "midori-preview@users.noreply.github.com",
}
REPOS_PER_MINUTE = 5
# What a preview's files are read back without (`providers.files.read_archive`).
READ_BACK_EXCLUDES = ("node_modules", ".git", ".cache", ".npm")


class RepoExporter:
    def __init__(
        self, *, settings: Settings, previews: PreviewService, client: GitHubClient
    ) -> None:
        self.settings = settings
        self.previews = previews
        self.client = client
        self.clone_base = settings.github_clone_base_url.rstrip("/")

    async def export(self, user_id: str, body: RepoCreateIn) -> RepoCreated:
        """Create the repository and push the files on branch `preview`."""
        try:
            wait = await self.previews.quota.hit_rate_limit(
                f"github-repos:{user_id}", per_minute=REPOS_PER_MINUTE
            )
        except RedisError:
            wait = 0  # the limit is a courtesy; GitHub enforces its own
        if wait:
            raise RateLimited(
                f"Too many repositories created; try again in {wait} s.",
                headers={"Retry-After": str(wait)},
                retryAfterSeconds=wait,
            )
        files, project = await self._files(user_id, body)
        token, installation = await self._credentials(body.org)
        try:
            made = await self.client.create_repo(
                body.name,
                org=body.org,
                private=body.private,
                description=body.description or f"Midori preview of {project}",
                installation_id=installation,
            )
        except GitHubError as exc:
            raise _repo_error(exc) from None
        full_name = valid_full_name(made.get("full_name"))
        if full_name is None:
            raise GitHubCallFailed("github_bad_answer", "GitHub answered with an unusable repo.")
        html = made.get("html_url")
        repo_url = html if isinstance(html, str) else f"{self.clone_base}/{full_name}"
        if not any(f.path.lower() == "readme.md" for f in files):
            files = [*files, FileData("README.md", readme(full_name, project, files).encode())]
        log.info("github.repo_created", repo=full_name, user_id=user_id, files=len(files))
        try:
            sha = await push_files(
                url=f"{self.clone_base}/{full_name}.git",
                files=files,
                token=token,
                message=f"Midori preview of {project}",
                timeout=self.settings.git_clone_timeout_seconds,
                scratch=self.settings.data_dir / "tmp",
            )
        except RepoPushFailed as exc:
            raise RepoPushFailed(
                f"The repository was created but the push failed ({exc.message}).",
                repoUrl=repo_url,
            ) from None
        log.info("github.repo_pushed", repo=full_name, branch=BRANCH, sha=sha)
        return RepoCreated(
            repo_url=repo_url,
            full_name=full_name,
            branch=BRANCH,
            private=body.private,
            commit_sha=sha,
            files=len(files),
        )

    async def _credentials(self, org: str | None) -> tuple[str, int | None]:
        if not self.client.configured:
            raise GitHubUnconfigured("GitHub is not configured (GITHUB_TOKEN or a GitHub App).")
        installation = None
        try:
            if self.client.uses_app:
                if org is None:
                    raise GitHubUnconfigured(
                        "A GitHub App can only create organization repositories: give `org`."
                    )
                installation = (
                    self.settings.github_app_installation_id
                    or await self.client.org_installation(org)
                )
            return await self.client.access_token(installation), installation
        except GitHubError as exc:
            raise _repo_error(exc) from None

    # --- files ------------------------------------------------------------------------------

    async def _files(self, user_id: str, body: RepoCreateIn) -> tuple[list[FileData], str]:
        if body.project_id is not None and (body.prompt_json is not None or body.files):
            try:
                preview = CreatePreview(
                    project_id=body.project_id,
                    prompt_json=body.prompt_json,
                    template=body.template,
                    files=body.files,
                )
            except ValidationError as exc:
                raise ValidationFailed(str(exc.errors()[0].get("msg", "invalid"))) from None
            s = self.settings
            plan = plan_for(
                preview,
                allowed_git_prefixes=[],
                max_files=s.max_files,
                max_bytes=s.max_request_bytes,
            )
            return list(plan.files), body.project_id
        sandbox = await self._sandbox(user_id, body)
        return await self._read_back(sandbox), sandbox.project_id

    async def _sandbox(self, user_id: str, body: RepoCreateIn) -> _Running:
        repo = self.previews.repo
        if body.sandbox_id is not None:
            row = await repo.get_for_user(body.sandbox_id, user_id)
            if row is None:
                raise SandboxNotFound("No such sandbox.", sandboxId=body.sandbox_id)
        else:
            rows = [
                r
                for r in await repo.live_for_user(user_id)
                if r.project_id == body.project_id and r.status == SandboxStatus.RUNNING
            ]
            if not rows:
                raise SandboxNotFound(
                    "No running preview of this project: start one, or send promptJson/files.",
                    projectId=body.project_id,
                )
            row = rows[-1]
        if row.status != SandboxStatus.RUNNING or not row.provider_id:
            raise SandboxNotRunning("The preview must be running to copy its files.")
        return _Running(row.id, row.provider_id, row.project_id)

    async def _read_back(self, sandbox: _Running) -> list[FileData]:
        provider = self.previews.provider
        handle = provider.attach(sandbox.provider_id, sandbox.id)
        limits = ArchiveLimits(
            max_files=self.settings.max_files,
            max_bytes=self.settings.max_request_bytes,
            skip_unsafe=True,  # a committed symlink is no reason to refuse the rest
        )
        try:
            return await read_archive(
                provider,
                handle,
                exclude=READ_BACK_EXCLUDES,
                timeout=self.settings.upload_timeout_seconds,
                limits=limits,
            )
        except ArchiveTooLarge as exc:
            if exc.kind == "files":
                raise PayloadTooLarge(f"at most {limits.max_files} files per repository") from None
            raise PayloadTooLarge(
                "The preview's files are larger than MAX_REQUEST_BYTES."
            ) from None
        except EmptyArchive:
            raise RepoPushFailed("The preview has no files to push.") from None
        except UnsafeArchive:
            raise RepoPushFailed("The preview's files could not be read back.") from None
        except ArchiveReadFailed:
            raise RepoPushFailed("Could not read the preview's files.") from None
        except ProviderError as exc:
            raise RepoPushFailed(f"Could not read the preview's files ({exc.code}).") from None


class _Running:
    def __init__(self, sandbox_id: str, provider_id: str, project_id: str) -> None:
        self.id = sandbox_id
        self.provider_id = provider_id
        self.project_id = project_id


def readme(full_name: str, project: str, files: Sequence[FileData]) -> str:
    paths = {f.path for f in files}
    if "package.json" in paths:
        run = "npm install\nnpm run build   # then serve dist/ (or npm run dev)"
    else:
        run = "python3 -m http.server 3000   # then open http://localhost:3000"
    return (
        f"# {full_name.split('/', 1)[1]}\n\n"
        f"The files of the Midori project `{project}` as they were previewed by midori-preview, "
        f"on branch `{BRANCH}`.\n\n## Run it locally\n\n```sh\n{run}\n```\n"
    )


def _repo_error(exc: GitHubError) -> PreviewError:
    if isinstance(exc, PreviewError):
        return exc
    if isinstance(exc, GitHubNotFound):
        return GitHubCallFailed(
            "github_not_found", "No such organization, or the service has no access to it.", 404
        )
    if isinstance(exc, GitHubAuthFailed):
        return GitHubCallFailed("github_auth_failed", "GitHub refused the service's credentials.")
    if isinstance(exc, GitHubRateLimited):
        return GitHubCallFailed(
            "github_rate_limited", "GitHub's rate limit is hit; retry later.", 503
        )
    if isinstance(exc, GitHubRejected):
        return GitHubCallFailed(
            "repo_create_rejected",
            "GitHub refused to create the repository (does one with this name exist already?).",
            409,
        )
    return GitHubCallFailed(exc.code, "GitHub is unavailable; retry later.", 503)


# --- git --------------------------------------------------------------------------------------


async def push_files(
    *,
    url: str,
    files: Sequence[FileData],
    token: str,
    message: str,
    timeout: float,
    scratch: Path,
    branch: str = BRANCH,
) -> str:
    """Commit `files` in a fresh repository and push it to `url` as `branch`: the commit sha."""
    root = await asyncio.to_thread(_scratch_dir, scratch)
    try:
        work, home = root / "repo", root / "home"
        await asyncio.to_thread(_write_tree, work, home, files)
        git = Git(
            home=home,
            timeout=timeout,
            credentials=GitCredentials(PUSH_USERNAME, token),
            executable=GIT,
            env=AUTHOR,
        )
        with git:
            await _git(git, work, "init", "-q", "--template=", "-b", branch)
            await _git(git, work, "add", "-A")
            await _git(git, work, "commit", "-q", "--no-verify", "-m", message)
            sha = (await _git(git, work, "rev-parse", "HEAD")).strip()
            await _git(git, work, "push", "-q", "--", url, f"HEAD:refs/heads/{branch}")
        return sha
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)


def _scratch_dir(scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="push-", dir=scratch))


def _write_tree(work: Path, home: Path, files: Sequence[FileData]) -> None:
    home.mkdir(parents=True)
    work.mkdir(parents=True)
    for f in files:
        if ".git" in validate_path(f.path).split("/"):
            raise ValidationFailed(f"invalid file path {f.path!r}", path=f.path)
    try:
        write_files(work, files)
    except UnsafePath as exc:
        raise ValidationFailed(f"invalid file path {exc.path!r}", path=exc.path) from None


async def _git(git: Git, cwd: Path, *args: str) -> str:
    try:
        return await git.run(*args, cwd=cwd)
    except GitTimeout as exc:
        raise RepoPushFailed(f"git {exc.step} timed out") from None
    except GitFailed as exc:
        log.warning("github.git_failed", step=exc.step, exit_code=exc.exit_code, detail=exc.detail)
        raise RepoPushFailed(f"git {exc.step} failed") from None
