"""Preview repositories: create a GitHub repository and push a project's files (plus a README) on
branch `preview`.

Git gets the token only through its environment: `GIT_ASKPASS` points at a script that prints
`$MIDORI_GIT_TOKEN`. The remote URL, every argv, `.git/config` and the logs never carry it."""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
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
from midori_preview.providers.base import FileData, ProviderError, ProviderSandbox
from midori_preview.settings import Settings

log = get_logger(__name__)

GIT = "git"  # resolved on GIT_PATH; tests point it at a recording wrapper
GIT_PATH = "/usr/bin:/bin"
BRANCH = "preview"
TOKEN_ENV = "MIDORI_GIT_TOKEN"  # noqa: S105 - the name of the variable, not a secret
REPOS_PER_MINUTE = 5
ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' x-access-token ;;
  *) printf '%s\\n' "${TOKEN_ENV}" ;;
esac
"""
# Read a sandbox's files back through the provider port: one command, its output base64 lines.
READ_BACK = (
    "tar -c -f - --exclude=node_modules --exclude=.git --exclude=.cache --exclude=.npm . | base64"
)


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
                if r.project_id == body.project_id and r.status == "running"
            ]
            if not rows:
                raise SandboxNotFound(
                    "No running preview of this project: start one, or send promptJson/files.",
                    projectId=body.project_id,
                )
            row = rows[-1]
        if row.status != "running" or not row.provider_id:
            raise SandboxNotRunning("The preview must be running to copy its files.")
        return _Running(row.id, row.provider_id, row.project_id)

    async def _read_back(self, sandbox: _Running) -> list[FileData]:
        provider = self.previews.provider
        handle = ProviderSandbox(provider.name, sandbox.provider_id, sandbox.id, "")
        cap = self.settings.max_request_bytes * 4 // 3 + 4096
        lines: list[str] = []
        size = 0

        async def collect(line: str, stream: str) -> None:
            nonlocal size
            if stream != "stdout":
                return
            size += len(line)
            if size <= cap:
                lines.append(line.strip())

        try:
            result = await provider.exec(
                handle, READ_BACK, timeout=self.settings.upload_timeout_seconds, on_output=collect
            )
        except ProviderError as exc:
            raise RepoPushFailed(f"Could not read the preview's files ({exc.code}).") from None
        if size > cap:
            raise PayloadTooLarge("The preview's files are larger than MAX_REQUEST_BYTES.")
        if result.exit_code != 0:
            raise RepoPushFailed("Could not read the preview's files.")
        return _untar("".join(lines), self.settings.max_files)


class _Running:
    def __init__(self, sandbox_id: str, provider_id: str, project_id: str) -> None:
        self.id = sandbox_id
        self.provider_id = provider_id
        self.project_id = project_id


def _untar(encoded: str, max_files: int) -> list[FileData]:
    """Regular files of the archive, paths checked; links and devices are left out."""
    files: list[FileData] = []
    try:
        raw = base64.b64decode(encoded, validate=True)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as archive:
            for member in archive.getmembers():
                if not member.isfile():
                    continue
                path = member.name.removeprefix("./")
                try:
                    validate_path(path)
                except ValidationFailed:
                    continue
                data = archive.extractfile(member)
                if data is None:
                    continue
                files.append(FileData(path, data.read()))
                if len(files) > max_files:
                    raise PayloadTooLarge(f"at most {max_files} files per repository")
    except (binascii.Error, ValueError, tarfile.TarError):
        raise RepoPushFailed("The preview's files could not be read back.") from None
    if not files:
        raise RepoPushFailed("The preview has no files to push.")
    return files


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
        work, home, askpass = root / "repo", root / "home", root / "askpass.sh"
        await asyncio.to_thread(_write_tree, work, home, askpass, files)
        env = {
            "PATH": GIT_PATH,
            "HOME": str(home),
            "LANG": "C.UTF-8",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ASKPASS": str(askpass),
            TOKEN_ENV: token,
            "GIT_ALLOW_PROTOCOL": "https:http:file",
            "GIT_AUTHOR_NAME": "midori-preview",
            "GIT_AUTHOR_EMAIL": "midori-preview@users.noreply.github.com",
            "GIT_COMMITTER_NAME": "midori-preview",
            "GIT_COMMITTER_EMAIL": "midori-preview@users.noreply.github.com",
        }
        await _git(work, env, timeout, token, "init", "-q", "--template=", "-b", branch)
        await _git(work, env, timeout, token, "add", "-A")
        await _git(work, env, timeout, token, "commit", "-q", "--no-verify", "-m", message)
        sha = (await _git(work, env, timeout, token, "rev-parse", "HEAD")).strip()
        await _git(
            work, env, timeout, token,
            "-c", "credential.helper=", "push", "-q", "--", url, f"HEAD:refs/heads/{branch}",
        )  # fmt: skip
        return sha
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)


def _scratch_dir(scratch: Path) -> Path:
    scratch.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="push-", dir=scratch))


def _write_tree(work: Path, home: Path, askpass: Path, files: Sequence[FileData]) -> None:
    askpass.write_text(ASKPASS)
    askpass.chmod(0o700)
    home.mkdir(parents=True)
    work.mkdir(parents=True)
    base = work.resolve()
    for f in files:
        target = (base / validate_path(f.path)).resolve()
        if not target.is_relative_to(base) or target == base or ".git" in Path(f.path).parts:
            raise ValidationFailed(f"invalid file path {f.path!r}", path=f.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(f.content)


async def _git(cwd: Path, env: Mapping[str, str], timeout: float, token: str, *args: str) -> str:
    step = next((a for a in args if not a.startswith("-") and "=" not in a), "git")
    proc = await asyncio.create_subprocess_exec(
        GIT,
        *args,
        cwd=str(cwd),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RepoPushFailed(f"git {step} timed out") from None
    if proc.returncode != 0:
        detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
        log.warning(
            "github.git_failed",
            step=step,
            exit_code=proc.returncode,
            detail=detail[0].replace(token, "[redacted]")[:300] if token else detail[0][:300],
        )
        raise RepoPushFailed(f"git {step} failed")
    return out.decode("utf-8", "replace")
