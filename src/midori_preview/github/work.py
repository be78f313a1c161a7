"""The work a webhook asks for: build a commit's preview (replacing the previous one), follow it
until it settles and tell GitHub, tear it down when the PR closes, and reconcile what no follower
saw. Work on one pull request (or branch) is serialized by a Redis lock shared by all replicas;
GitHub is told of a build's end only while the mapping still points at that sandbox, so a newer
commit always wins."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime

from redis.exceptions import LockError, RedisError

from midori_preview.clock import Clock
from midori_preview.db.github import GitHubRepository
from midori_preview.db.models import GitHubPreview
from midori_preview.errors import ConcurrencyLimit, PreviewError, RateLimited
from midori_preview.events import EventBus
from midori_preview.github.client import GitHubClient, GitHubError
from midori_preview.github.comments import CommentState
from midori_preview.github.notify import Notifier
from midori_preview.github.order import EventOrder
from midori_preview.github.payloads import Build, Close, Target
from midori_preview.github.states import ACTIVE, GitHubState
from midori_preview.github.watch import SandboxWatch
from midori_preview.logging import get_logger
from midori_preview.previews.schemas import CreatePreview, GitIn, PreviewStatus
from midori_preview.previews.service import PreviewService
from midori_preview.previews.sources import CredentialSource
from midori_preview.previews.states import SandboxStatus
from midori_preview.providers.base import GitCredentials
from midori_preview.settings import Settings

log = get_logger(__name__)

S = SandboxStatus
LOCK_SECONDS = 300
LOCK_WAIT_SECONDS = 120


@dataclass(frozen=True, slots=True)
class Started:
    sandbox_id: str | None
    acted: bool  # False: nothing was to be done (stale, superseded, already previewed)
    wait: float | None = None  # the repository's budget is spent: try again after this long


def project_id_for(target: Target) -> str:
    raw = f"gh:{target.repo}:{target.key}".replace("/", ":")
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", raw)[:200]


class PreviewWork:
    def __init__(
        self,
        *,
        settings: Settings,
        previews: PreviewService,
        store: GitHubRepository,
        events: EventBus,
        clock: Clock,
        client: GitHubClient,
        notify: Notifier,
        watch: SandboxWatch,
        review_link: Callable[[Target], str | None],
        order: EventOrder,
    ) -> None:
        self.settings = settings
        self.previews = previews
        self.store = store
        self.events = events
        self.clock = clock
        self.client = client
        self.notify = notify
        self.watch = watch
        self.review_link = review_link
        self.order = order
        self.clone_base = settings.github_clone_base_url.rstrip("/")

    @contextlib.asynccontextmanager
    async def locked(self, target: Target) -> AsyncIterator[None]:
        name = f"{self.events.prefix}:github:lock:{target.repo.lower()}:{target.key}"
        lock = self.events.redis.lock(
            name, timeout=LOCK_SECONDS, blocking_timeout=LOCK_WAIT_SECONDS
        )
        if not await lock.acquire():
            raise TimeoutError(f"could not lock {target.repo} {target.key}")
        try:
            yield
        finally:
            with contextlib.suppress(LockError, RedisError):
                await lock.release()

    # --- build ------------------------------------------------------------------------------

    async def build_and_follow(self, d: Build, seen: float) -> bool:
        """Build the commit's preview and follow it until it settles: False when it could not
        be started or failed to build (True when nothing was to be done). `seen`: the event's
        order (a newer event of the same target supersedes this one). Over the repository's
        budget it waits its turn (the PR keeps its current preview meanwhile)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.github_rate_wait_max_seconds
        while True:
            final = loop.time() >= deadline
            started = await self.build(d, seen, final=final)
            if started.wait is None:
                break
            await asyncio.sleep(min(started.wait, max(deadline - loop.time(), 0.0)) + 0.05)
        if started.sandbox_id is None:
            return not started.acted  # refused: failed; nothing to do: done
        status = await self.watch.wait_settled(started.sandbox_id)
        if status is None:
            return False
        await self.settle(d.target, started.sandbox_id, status)
        return status.status != S.ERROR

    async def build(self, d: Build, seen: float, *, final: bool = True) -> Started:
        """Start the commit's preview and retire the previous one, unless the event is stale,
        superseded or already previewed — or the repository's budget says wait (not `final`)."""
        t = d.target
        async with self.locked(t):
            row = await self.store.get(t.repo, t.key)
            if row is not None and _stale(row, d.event_at):
                log.info("github.event_stale", repo=t.repo, target=t.key)
                return Started(None, acted=False)
            if await self.order.superseded(t, seen):
                log.info("github.event_superseded", repo=t.repo, target=t.key, sha=d.sha)
                return Started(None, acted=False)
            if (
                row is not None
                and row.head_sha == d.sha
                and row.state in ACTIVE
                and await self.watch.live(row.sandbox_id)
            ):
                log.info("github.already_previewed", repo=t.repo, target=t.key, sha=d.sha)
                return Started(None, acted=False)
            old = row.sandbox_id if row is not None else None
            if d.fork and not await self._trusted(d):
                await self._hold(d, row)
                return Started(None, acted=False)
            sandbox_id, failure, wait = await self._create(d, old, final=final)
            if wait is not None:
                log.info("github.build_waits", repo=t.repo, target=t.key, seconds=wait)
                return Started(None, acted=True, wait=wait)
            old_deployment = row.deployment_id if row is not None else None
            new = await self._save_build(d, row, sandbox_id, failure)
            if old is not None:
                await self.watch.stop(old, "replaced")
            await self._announce_build(d, new, old_deployment, failure)
        return Started(sandbox_id, acted=True)

    async def _trusted(self, d: Build) -> bool:
        """A fork PR is built when a maintainer labelled it, or its author collaborates."""
        if self.settings.github_fork_label in d.labels:
            return True
        if d.author is None:
            return False
        try:
            return await self.client.is_collaborator(
                d.target.repo, d.author, installation_id=d.installation_id
            )
        except GitHubError as exc:
            log.warning("github.collaborator_unknown", repo=d.target.repo, code=exc.code)
            return False

    async def _hold(self, d: Build, old: GitHubPreview | None) -> None:
        """A stranger's fork PR: nothing is built; the comment says what a maintainer can do."""
        t = d.target
        row = await self._save_build(d, old, None, None, state=GitHubState.WAITING)
        if old is not None and old.sandbox_id is not None:
            await self.watch.stop(old.sandbox_id, "replaced")
        if old is not None and old.deployment_id is not None:
            await self.notify.status(t.repo, old.deployment_id, "inactive", row.installation_id,
                                     "Waiting for a maintainer")  # fmt: skip
        label = self.settings.github_fork_label
        await self.notify.comment(row, CommentState(GitHubState.WAITING, d.sha, message=label))
        log.info("github.fork_waits", repo=t.repo, target=t.key, sha=d.sha)

    async def _save_build(
        self,
        d: Build,
        old: GitHubPreview | None,
        sandbox_id: str | None,
        failure: str | None,
        *,
        state: str | None = None,
    ) -> GitHubPreview:
        t = d.target
        now = self.clock.now()
        row = GitHubPreview(
            repo=t.repo,
            target=t.key,
            pr_number=t.pr_number,
            branch=t.branch,
            state=state or (GitHubState.BUILDING if sandbox_id else GitHubState.FAILED),
            sandbox_id=sandbox_id,
            head_sha=d.sha,
            comment_id=old.comment_id if old is not None else None,
            deployment_id=None,
            installation_id=d.installation_id or (old.installation_id if old else None),
            detail=failure,
            event_at=_latest(d.event_at, old.event_at if old is not None else None),
            created_at=old.created_at if old is not None else now,
            updated_at=now,
            comment_body=old.comment_body if old is not None else None,
            comment_synced=True,
            deploy_state=None,
            deploy_description=None,
            deploy_url=None,
            deploy_synced=True,
        )
        await self.store.save(row)
        log.info(
            "github.build_started" if sandbox_id else "github.build_refused",
            repo=t.repo,
            target=t.key,
            sha=d.sha,
            sandbox_id=sandbox_id,
        )
        return row

    async def _announce_build(
        self, d: Build, row: GitHubPreview, old_deployment: int | None, failure: str | None
    ) -> None:
        t = d.target
        inst = row.installation_id
        building = row.sandbox_id is not None
        comment = (
            CommentState(GitHubState.BUILDING, d.sha) if building else _refused(d.sha, failure)
        )
        await self.notify.comment(row, comment)
        if old_deployment is not None:
            await self.notify.status(t.repo, old_deployment, "inactive", inst, "Replaced")
        if building:
            await self.notify.deploy(row, "in_progress", "Building")
        else:
            await self.notify.deploy(row, "failure", "Not built")

    async def _create(
        self, d: Build, old: str | None, *, final: bool
    ) -> tuple[str | None, str | None, float | None]:
        """(sandbox id, why it was refused, how long to wait for the repository's budget)."""
        s = self.settings
        body = CreatePreview(
            project_id=project_id_for(d.target),
            git=GitIn(url=f"{self.clone_base}/{d.source_repo}.git", ref=d.sha),
        )
        for retry in (False, True):
            try:
                _, created = await self.previews.create(
                    s.github_service_user,
                    body,
                    kind="github",
                    concurrency_limit=s.github_max_concurrent_previews,
                    ttl_seconds=s.github_preview_ttl_seconds,
                    check_daily_quota=False,
                    extra_git_prefixes=[f"{self.clone_base}/"],
                    git_credentials=self._clone_credentials(d),
                    rate=(f"github:{d.target.repo.lower()}", s.github_repo_creates_per_minute),
                )
                return created.sandbox_id, None, None
            except RateLimited as exc:
                if not final:
                    return None, None, float(exc.extra.get("retryAfterSeconds", 5))
                return None, "Too many previews of this repository were started just now.", None
            except ConcurrencyLimit:
                if old is not None and not retry:  # this PR's own preview frees the slot
                    await self.watch.stop(old, "replaced")
                    continue
                return (
                    None,
                    (
                        f"Too many GitHub previews are running (limit "
                        f"{s.github_max_concurrent_previews}); close a pull request or wait for a "
                        "preview to expire."
                    ),
                    None,
                )
            except PreviewError as exc:
                log.warning("github.create_refused", repo=d.target.repo, code=exc.code)
                return None, exc.message, None
        return None, "Could not start the preview.", None  # pragma: no cover

    def _clone_credentials(self, d: Build) -> CredentialSource | None:
        """How the clone authenticates (private repositories): the token, asked right before
        the clone, as HTTP credentials — never in the URL. Only for the base repository's own
        owner: a fork elsewhere is cloned as anyone would (our token is not for strangers')."""
        if not self.client.configured:
            return None
        if d.source_repo.partition("/")[0].lower() != d.target.repo.partition("/")[0].lower():
            return None

        async def credentials() -> GitCredentials | None:
            try:
                token = await self.client.clone_token(d.source_repo, d.installation_id)
            except GitHubError as exc:
                log.warning("github.clone_token_failed", repo=d.source_repo, code=exc.code)
                return None
            return GitCredentials("x-access-token", token)

        return credentials

    # --- settle -----------------------------------------------------------------------------

    async def settle(self, target: Target, sandbox_id: str, status: PreviewStatus) -> None:
        """Tell GitHub how the build of `sandbox_id` ended (or that its preview stopped) —
        only while the mapping still points at that sandbox, so a newer commit always wins."""
        async with self.locked(target):
            row = await self.store.get(target.repo, target.key)
            if row is None or row.sandbox_id != sandbox_id:
                return  # a newer commit took over
            if not (
                row.state == GitHubState.BUILDING
                or (row.state == GitHubState.READY and status.status != S.RUNNING)
            ):
                return  # already told (or closed)
            if status.status == S.RUNNING:
                await self._ready(target, row)
            elif status.status == S.ERROR and row.state == GitHubState.BUILDING:
                await self._failed(target, row, status)
            else:  # stopped (expired, by an admin …) or lost after it was ready
                await self._stopped(target, row, status)

    async def _ready(self, target: Target, row: GitHubPreview) -> None:
        link = self.review_link(target)
        await self.store.update(
            target.repo, target.key, state=GitHubState.READY, updated_at=self.clock.now()
        )
        ttl_hours = self.settings.github_preview_ttl_seconds / 3600
        await self.notify.comment(
            row, CommentState(GitHubState.READY, row.head_sha, link=link, ttl_hours=ttl_hours)
        )
        await self.notify.deploy(row, "success", "Ready", link)
        log.info("github.preview_ready", repo=target.repo, target=target.key)

    async def _failed(self, target: Target, row: GitHubPreview, status: PreviewStatus) -> None:
        err = status.error
        step = err.step if err else None
        await self.store.update(
            target.repo,
            target.key,
            state=GitHubState.FAILED,
            detail=f"{step}: {err.message}" if err else None,
            updated_at=self.clock.now(),
        )
        await self.notify.comment(
            row,
            CommentState(
                GitHubState.FAILED,
                row.head_sha,
                step=step,
                message=err.message if err else None,
                exit_code=err.exit_code if err else None,
                logs=list(status.logs_tail),
            ),
        )
        await self.notify.deploy(row, "failure", f"Failed at {step}")
        log.info("github.preview_failed", repo=target.repo, target=target.key, step=step)

    async def _stopped(self, target: Target, row: GitHubPreview, status: PreviewStatus) -> None:
        await self.store.update(
            target.repo,
            target.key,
            state=GitHubState.STOPPED,
            detail=status.reason,
            updated_at=self.clock.now(),
        )
        await self.notify.comment(
            row, CommentState(GitHubState.STOPPED, row.head_sha, message=status.reason)
        )
        await self.notify.deploy(row, "inactive", "Stopped")
        log.info("github.preview_stopped", repo=target.repo, target=target.key)

    async def reconcile(self) -> int:
        """Catch up with sandboxes whose end no follower saw (a replica died mid-build, or the
        reaper stopped a ready preview): GitHub is told, as if followed; then re-send what
        GitHub should show but does not yet (a failed comment edit or deployment status).
        Idempotent: the number of previews acted on."""
        return await self._catch_up() + await self._resend()

    async def _resend(self) -> int:
        done = 0
        for stale in await self.store.unsynced():
            target = Target(stale.repo, stale.target, stale.pr_number, stale.branch)
            async with self.locked(target):
                row = await self.store.get(stale.repo, stale.target)
                if row is None or (row.comment_synced and row.deploy_synced):
                    continue
                if not row.comment_synced:
                    await self.notify.send_comment(row, create=row.state != GitHubState.CLOSED)
                await self.notify.send_deploy(row)
                done += 1
        return done

    async def _catch_up(self) -> int:
        done = 0
        for row in await self.store.open_previews():
            if row.sandbox_id is None:
                continue
            settled = await self.watch.settled(row.sandbox_id)
            if settled is None or (row.state == GitHubState.READY and settled.status == S.RUNNING):
                continue
            target = Target(row.repo, row.target, row.pr_number, row.branch)
            await self.settle(target, row.sandbox_id, settled)
            done += 1
        return done

    # --- close ------------------------------------------------------------------------------

    async def close(self, d: Close) -> None:
        t = d.target
        async with self.locked(t):
            row = await self.store.get(t.repo, t.key)
            if row is None or row.state == GitHubState.CLOSED:
                return
            if _stale(row, d.event_at):
                log.info("github.event_stale", repo=t.repo, target=t.key)
                return
            await self.store.update(
                t.repo,
                t.key,
                state=GitHubState.CLOSED,
                event_at=_latest(d.event_at, row.event_at),
                updated_at=self.clock.now(),
            )
            if row.sandbox_id is not None:
                await self.watch.stop(row.sandbox_id, d.reason)
            await self.notify.comment(
                row, CommentState(GitHubState.CLOSED, row.head_sha), create=False
            )
            await self.notify.deploy(row, "inactive", "Closed")
            log.info("github.preview_closed", repo=t.repo, target=t.key, reason=d.reason)


def _stale(row: GitHubPreview, event_at: datetime | None) -> bool:
    return event_at is not None and row.event_at is not None and event_at < row.event_at


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _refused(sha: str, failure: str | None) -> CommentState:
    return CommentState(GitHubState.FAILED, sha, step="admission", message=failure)
