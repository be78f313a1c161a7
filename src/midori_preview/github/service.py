"""GitHubService: webhook deliveries in, previews built and torn down, GitHub kept informed.

A delivery is recorded (insert-on-conflict: a redelivery acts once) and answered at once; the work
runs in tasks this service owns. Work on one pull request (or branch) is serialized by a Redis lock
shared by all replicas; a build is followed through the sandbox's event stream (Redis, so any
replica sees it) and then the one PR comment and the deployment are updated — but only if the
mapping still points at that sandbox, so a newer commit always wins."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from redis.exceptions import LockError, RedisError

from midori_preview.clock import Clock
from midori_preview.db.github import GitHubRepository
from midori_preview.db.models import GitHubPreview
from midori_preview.errors import (
    ConcurrencyLimit,
    PreviewError,
    RateLimited,
    SandboxNotFound,
    SandboxNotRunning,
)
from midori_preview.events import EventBus
from midori_preview.github.client import (
    AppCredentials,
    GitHubClient,
    GitHubError,
    GitHubNotConfigured,
    GitHubNotFound,
)
from midori_preview.github.comments import MARKER, CommentState, render
from midori_preview.github.errors import (
    PreviewBuilding,
    PreviewClosed,
    PreviewFailed,
    PreviewGone,
    ReviewLinkNotFound,
)
from midori_preview.github.gitpush import RepoExporter
from midori_preview.github.payloads import Build, Close, Ignore, Policy, Target, decide
from midori_preview.github.signature import LinkSigner, derive_key
from midori_preview.logging import get_logger
from midori_preview.previews.schemas import CreatePreview, GitIn, PreviewStatus
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import LIVE, SETTLED, SandboxStatus
from midori_preview.settings import Settings

log = get_logger(__name__)
T = TypeVar("T")

S = SandboxStatus
LOCK_SECONDS = 300
LOCK_WAIT_SECONDS = 120
DELIVERY_RETENTION = timedelta(days=7)
PRUNE_EVERY_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Receipt:
    outcome: Literal["accepted", "duplicate", "ignored"]
    reason: str | None = None


def project_id_for(target: Target) -> str:
    raw = f"gh:{target.repo}:{target.key}".replace("/", ":")
    return re.sub(r"[^A-Za-z0-9._:@-]", "-", raw)[:200]


class GitHubService:
    def __init__(
        self,
        *,
        settings: Settings,
        previews: PreviewService,
        store: GitHubRepository,
        client: GitHubClient,
        events: EventBus,
        clock: Clock,
        links: LinkSigner | None,
        exporter: RepoExporter,
    ) -> None:
        self.settings = settings
        self.previews = previews
        self.store = store
        self.client = client
        self.events = events
        self.clock = clock
        self.links = links
        self.exporter = exporter
        self.policy = Policy(
            allowlist=list(settings.github_repo_allowlist),
            build_forks=settings.github_build_forks,
            push_branches=list(settings.github_push_branches),
        )
        self.clone_base = settings.github_clone_base_url.rstrip("/")
        self._tasks: set[asyncio.Task[None]] = set()  # webhook work: wait_idle() waits for it
        self._pruned_at: float | None = None  # clock.monotonic() of the last delivery prune

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        previews: PreviewService,
        store: GitHubRepository,
        events: EventBus,
        clock: Clock,
    ) -> GitHubService:
        """Wire the client, store, link signer and exporter from settings."""
        s = settings
        app = None
        if s.github_app_id is not None and s.github_app_private_key is not None:
            app = AppCredentials(
                s.github_app_id,
                s.github_app_private_key.get_secret_value(),
                s.github_app_installation_id,
            )
        client = GitHubClient(
            api_url=s.github_api_url,
            token=s.github_token.get_secret_value() if s.github_token else None,
            app=app,
            timeout=s.github_request_timeout_seconds,
            attempts=s.github_retry_attempts,
            backoff=s.github_retry_backoff_seconds,
            max_wait=s.github_retry_max_wait_seconds,
        )
        key = None
        if s.github_link_secret is not None:
            key = derive_key(s.github_link_secret.get_secret_value().encode(), "review-link")
        elif s.github_webhook_secret is not None:
            key = derive_key(s.github_webhook_secret.get_secret_value().encode(), "review-link")
        exporter = RepoExporter(settings=s, previews=previews, client=client)
        return cls(
            settings=s,
            previews=previews,
            store=store,
            client=client,
            events=events,
            clock=clock,
            links=LinkSigner(key) if key else None,
            exporter=exporter,
        )

    @property
    def webhook_secret(self) -> bytes | None:
        secret = self.settings.github_webhook_secret
        return secret.get_secret_value().encode() if secret else None

    # --- tasks ------------------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait_idle(self) -> None:
        """Wait until no webhook work runs in this process (tests and graceful shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the work in flight and close the GitHub client (idempotent)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.client.aclose()

    # --- webhooks ---------------------------------------------------------------------------

    async def receive(self, delivery_id: str, event: str, payload: dict[str, Any]) -> Receipt:
        """Record a verified delivery and start its work in the background (first time only)."""
        action = payload.get("action")
        first = await self.store.record_delivery(
            delivery_id,
            event[:64],
            action[:64] if isinstance(action, str) else None,
            self.clock.now(),
        )
        self._maybe_prune()
        if not first:
            log.info("github.delivery_duplicate", delivery_id=delivery_id, gh_event=event)
            return Receipt("duplicate")
        decision = decide(event, payload, self.policy)
        if isinstance(decision, Ignore):
            log.info(
                "github.delivery_ignored",
                delivery_id=delivery_id,
                gh_event=event,
                action=action if isinstance(action, str) else None,
                reason=decision.reason,
            )
            return Receipt("ignored", decision.reason)
        t = decision.target
        log.info(
            "github.delivery_accepted",
            delivery_id=delivery_id,
            repo=t.repo,
            target=t.key,
            kind="build" if isinstance(decision, Build) else "close",
        )
        work = self._build(decision) if isinstance(decision, Build) else self._close(decision)
        self._spawn(self._guarded(work, t), name=f"github:{t.repo}:{t.key}")
        return Receipt("accepted")

    def _maybe_prune(self) -> None:
        now = self.clock.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = now

        async def prune() -> None:
            with contextlib.suppress(Exception):
                await self.store.prune_deliveries(self.clock.now() - DELIVERY_RETENTION)

        self._spawn(prune(), name="github:prune")

    async def _guarded(self, work: Coroutine[Any, Any, None], target: Target) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("github.work_failed", repo=target.repo, target=target.key)

    @contextlib.asynccontextmanager
    async def _locked(self, target: Target) -> AsyncIterator[None]:
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

    async def _build(self, d: Build) -> None:
        t = d.target
        async with self._locked(t):
            row = await self.store.get(t.repo, t.key)
            if row is not None and _stale(row, d.event_at):
                log.info("github.event_stale", repo=t.repo, target=t.key)
                return
            if (
                row is not None
                and row.head_sha == d.sha
                and row.state in ("building", "ready")
                and await self._live(row.sandbox_id)
            ):
                log.info("github.already_previewed", repo=t.repo, target=t.key, sha=d.sha)
                return
            old_sandbox = row.sandbox_id if row is not None else None
            old_deployment = row.deployment_id if row is not None else None
            if old_sandbox is not None:
                await self._stop(old_sandbox, "replaced")
            sandbox_id, failure = await self._create(d)
            now = self.clock.now()
            row = GitHubPreview(
                repo=t.repo,
                target=t.key,
                pr_number=t.pr_number,
                branch=t.branch,
                state="building" if sandbox_id else "failed",
                sandbox_id=sandbox_id,
                head_sha=d.sha,
                comment_id=row.comment_id if row is not None else None,
                deployment_id=None,
                installation_id=d.installation_id or (row.installation_id if row else None),
                detail=failure,
                event_at=_latest(d.event_at, row.event_at if row is not None else None),
                created_at=row.created_at if row is not None else now,
                updated_at=now,
            )
            await self.store.save(row)
            log.info(
                "github.build_started" if sandbox_id else "github.build_refused",
                repo=t.repo,
                target=t.key,
                sha=d.sha,
                sandbox_id=sandbox_id,
            )
            inst = row.installation_id
            comment = CommentState("building", d.sha) if sandbox_id else _refused(d.sha, failure)
            await self._comment(row, comment)
            if old_deployment is not None:
                await self._status(t.repo, old_deployment, "inactive", inst, "Replaced")
            deployment = await self._call(
                self.client.create_deployment(
                    t.repo, d.sha, description="Midori preview", installation_id=inst
                )
            )
            if deployment is not None:
                await self.store.update(t.repo, t.key, deployment_id=deployment)
                if sandbox_id:
                    await self._status(t.repo, deployment, "in_progress", inst, "Building")
                else:
                    await self._status(t.repo, deployment, "failure", inst, "Not built")
        if sandbox_id:
            self._spawn(self._guarded(self._follow(t, sandbox_id), t), name=f"follow:{sandbox_id}")

    async def _create(self, d: Build) -> tuple[str | None, str | None]:
        s = self.settings
        body = CreatePreview(
            project_id=project_id_for(d.target),
            git=GitIn(url=f"{self.clone_base}/{d.source_repo}.git", ref=d.sha),
        )
        for attempt in range(3):
            try:
                _, created = await self.previews.create(
                    s.github_service_user,
                    body,
                    kind="github",
                    concurrency_limit=s.github_max_concurrent_previews,
                    ttl_seconds=s.github_preview_ttl_seconds,
                    check_daily_quota=False,
                    extra_git_prefixes=[f"{self.clone_base}/"],
                )
                return created.sandbox_id, None
            except RateLimited as exc:
                if attempt == 2:
                    return None, "Too many previews were started just now."
                wait = exc.extra.get("retryAfterSeconds", 5)
                await asyncio.sleep(min(float(wait), 60.0))
            except ConcurrencyLimit:
                return None, (
                    f"Too many GitHub previews are running (limit "
                    f"{s.github_max_concurrent_previews}); close a pull request or wait for a "
                    "preview to expire."
                )
            except PreviewError as exc:
                log.warning("github.create_refused", repo=d.target.repo, code=exc.code)
                return None, exc.message
        return None, "Could not start the preview."  # pragma: no cover

    async def _follow(self, target: Target, sandbox_id: str) -> None:
        status = await self._wait_settled(sandbox_id)
        if status is not None:
            await self._settle(target, sandbox_id, status)

    async def _settle(self, target: Target, sandbox_id: str, status: PreviewStatus) -> None:
        """Tell GitHub how the build of `sandbox_id` ended (or that its preview stopped) —
        only while the mapping still points at that sandbox, so a newer commit always wins."""
        async with self._locked(target):
            row = await self.store.get(target.repo, target.key)
            if row is None or row.sandbox_id != sandbox_id:
                return  # a newer commit took over
            if not (
                row.state == "building" or (row.state == "ready" and status.status != S.RUNNING)
            ):
                return  # already told (or closed)
            now = self.clock.now()
            inst = row.installation_id
            dep = row.deployment_id
            if status.status == S.RUNNING:
                link = self.review_link(target)
                await self.store.update(
                    target.repo, target.key, sandbox_id=sandbox_id, state="ready", updated_at=now
                )
                ttl_hours = self.settings.github_preview_ttl_seconds / 3600
                await self._comment(
                    row, CommentState("ready", row.head_sha, link=link, ttl_hours=ttl_hours)
                )
                if dep is not None:
                    await self._status(target.repo, dep, "success", inst, "Ready", link)
                log.info("github.preview_ready", repo=target.repo, target=target.key)
            elif status.status == S.ERROR and row.state == "building":
                err = status.error
                step = err.step if err else None
                await self.store.update(
                    target.repo,
                    target.key,
                    sandbox_id=sandbox_id,
                    state="failed",
                    detail=f"{step}: {err.message}" if err else None,
                    updated_at=now,
                )
                await self._comment(
                    row,
                    CommentState(
                        "failed",
                        row.head_sha,
                        step=step,
                        message=err.message if err else None,
                        exit_code=err.exit_code if err else None,
                        logs=list(status.logs_tail),
                    ),
                )
                if dep is not None:
                    await self._status(target.repo, dep, "failure", inst, f"Failed at {step}")
                log.info("github.preview_failed", repo=target.repo, target=target.key, step=step)
            else:  # stopped (expired, by an admin …) or lost after it was ready
                await self.store.update(
                    target.repo,
                    target.key,
                    sandbox_id=sandbox_id,
                    state="stopped",
                    detail=status.reason,
                    updated_at=now,
                )
                await self._comment(
                    row, CommentState("stopped", row.head_sha, message=status.reason)
                )
                if dep is not None:
                    await self._status(target.repo, dep, "inactive", inst, "Stopped")
                log.info("github.preview_stopped", repo=target.repo, target=target.key)

    async def reconcile(self) -> int:
        """Catch up with sandboxes whose end no follower saw (a replica died mid-build, or the
        reaper stopped a ready preview): GitHub is told, as if followed. Idempotent."""
        done = 0
        for row in await self.store.open_previews():
            if row.sandbox_id is None:
                continue
            settled = await self._settled(row.sandbox_id)
            if settled is None or (row.state == "ready" and settled.status == S.RUNNING):
                continue
            target = Target(row.repo, row.target, row.pr_number, row.branch)
            await self._settle(target, row.sandbox_id, settled)
            done += 1
        return done

    async def _wait_settled(self, sandbox_id: str) -> PreviewStatus | None:
        """The sandbox once it is running, failed or stopped — from its event stream, with a
        database check whenever the stream is quiet (events are best effort)."""
        s = self.settings
        budget = (
            s.sandbox_create_timeout_seconds
            + s.git_clone_timeout_seconds
            + 3 * s.build_step_timeout_seconds
            + s.start_timeout_seconds
            + 60
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        while loop.time() < deadline:
            try:
                async for event in self.events.follow(sandbox_id, block_ms=2000):
                    if event is None or event.kind == "status":
                        settled = await self._settled(sandbox_id)
                        if settled is not None:
                            return settled
                    if loop.time() >= deadline:
                        break
            except RedisError:
                await asyncio.sleep(2)
            settled = await self._settled(sandbox_id)
            if settled is not None:
                return settled
        log.warning("github.follow_gave_up", sandbox_id=sandbox_id)
        return None

    async def _settled(self, sandbox_id: str) -> PreviewStatus | None:
        try:
            status = await self.previews.status(sandbox_id, None)
        except SandboxNotFound:
            return None
        return status if status.status in SETTLED else None

    # --- close ------------------------------------------------------------------------------

    async def _close(self, d: Close) -> None:
        t = d.target
        async with self._locked(t):
            row = await self.store.get(t.repo, t.key)
            if row is None or row.state == "closed":
                return
            if _stale(row, d.event_at):
                log.info("github.event_stale", repo=t.repo, target=t.key)
                return
            await self.store.update(
                t.repo,
                t.key,
                state="closed",
                event_at=_latest(d.event_at, row.event_at),
                updated_at=self.clock.now(),
            )
            if row.sandbox_id is not None:
                await self._stop(row.sandbox_id, d.reason)
            await self._comment(row, CommentState("closed", row.head_sha), create=False)
            if row.deployment_id is not None:
                await self._status(t.repo, row.deployment_id, "inactive", row.installation_id,
                                   "Closed")  # fmt: skip
            log.info("github.preview_closed", repo=t.repo, target=t.key, reason=d.reason)

    # --- review links -----------------------------------------------------------------------

    def review_link(self, target: Target) -> str | None:
        if self.links is None:
            return None
        token = self.links.sign(target.repo, target.key)
        return f"{self.settings.effective_public_url}/r/{token}"

    async def review_url(self, token: str) -> str:
        """A fresh, short-lived preview URL for a review link — while its PR is open."""
        found = self.links.verify(token) if self.links is not None else None
        if found is None:
            raise ReviewLinkNotFound("No such preview link.")
        row = await self.store.get(*found)
        if row is None:
            raise ReviewLinkNotFound("No such preview link.")
        if row.state == "closed":
            raise PreviewClosed("The pull request was closed; this preview is gone.")
        if row.state == "failed":
            raise PreviewFailed(f"The preview of {row.head_sha[:7]} failed to build.")
        if row.sandbox_id is None or row.state == "stopped":
            raise PreviewGone("This preview was stopped; push a commit to rebuild it.")
        try:
            return await self.previews.fresh_open_url(
                row.sandbox_id, self.settings.github_review_link_ttl_seconds
            )
        except (SandboxNotRunning, SandboxNotFound):
            pass
        status = await self._settled(row.sandbox_id)
        if status is None and row.state == "building":
            raise PreviewBuilding(
                "The preview is still being built; try again in a moment.",
                headers={"Retry-After": "5"},
            )
        if status is not None and status.status == S.ERROR and row.state == "building":
            raise PreviewFailed(f"The preview of {row.head_sha[:7]} failed to build.")
        raise PreviewGone("This preview was stopped; push a commit to rebuild it.")

    # --- helpers ----------------------------------------------------------------------------

    async def _live(self, sandbox_id: str | None) -> bool:
        if sandbox_id is None:
            return False
        try:
            status = await self.previews.status(sandbox_id, None)
        except SandboxNotFound:
            return False
        return status.status in LIVE

    async def _stop(self, sandbox_id: str, reason: str) -> None:
        try:
            await self.previews.stop(sandbox_id, reason=reason)
        except SandboxNotFound:
            pass
        except PreviewError as exc:
            log.warning("github.stop_failed", sandbox_id=sandbox_id, code=exc.code)

    async def _call(self, call: Coroutine[Any, Any, T]) -> T | None:
        """A GitHub call whose failure must not stop the preview work (logged, None)."""
        try:
            return await call
        except GitHubNotConfigured:
            return None
        except GitHubError as exc:
            log.warning("github.call_failed", code=exc.code, status=exc.status)
            return None

    async def _status(
        self,
        repo: str,
        deployment_id: int,
        state: str,
        installation_id: int | None,
        description: str,
        url: str | None = None,
    ) -> None:
        await self._call(
            self.client.deployment_status(
                repo,
                deployment_id,
                state,
                environment_url=url,
                description=description,
                installation_id=installation_id,
            )
        )

    async def _comment(
        self, row: GitHubPreview, state: CommentState, *, create: bool = True
    ) -> None:
        """Write the PR's one comment: edit the known one, else the one carrying the marker,
        else (only then) create it. Callers hold the PR's lock, so two never race."""
        if row.pr_number is None or not self.client.configured:
            return
        body = render(state)
        inst = row.installation_id
        try:
            comment_id = row.comment_id
            if comment_id is None:
                comment_id = await self.client.find_comment(
                    row.repo, row.pr_number, MARKER, installation_id=inst
                )
            if comment_id is not None:
                try:
                    await self.client.edit_comment(row.repo, comment_id, body, installation_id=inst)
                except GitHubNotFound:
                    comment_id = None  # deleted by someone: write a new one
            if comment_id is None:
                if not create:
                    return
                comment_id = await self.client.create_comment(
                    row.repo, row.pr_number, body, installation_id=inst
                )
        except GitHubError as exc:
            log.warning("github.comment_failed", repo=row.repo, code=exc.code, status=exc.status)
            return
        if comment_id != row.comment_id:
            await self.store.update(row.repo, row.target, comment_id=comment_id)


def _stale(row: GitHubPreview, event_at: datetime | None) -> bool:
    return event_at is not None and row.event_at is not None and event_at < row.event_at


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _refused(sha: str, failure: str | None) -> CommentState:
    return CommentState("failed", sha, step="admission", message=failure)
