"""GitHubService, the integration's public face: wiring from settings, webhook deliveries in
(recorded insert-on-conflict, answered at once, their work run in tasks this service owns),
reconcile, and review links. The work itself is `work.py`; what GitHub shows, `notify.py`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from midori_preview.clock import Clock
from midori_preview.db.github import GitHubRepository
from midori_preview.errors import SandboxNotFound, SandboxNotRunning
from midori_preview.events import EventBus
from midori_preview.github.actions import delivery_id_of, event_of
from midori_preview.github.client import (
    AppCredentials,
    GitHubClient,
    GitHubError,
    GitHubNotConfigured,
    GitHubNotFound,
)
from midori_preview.github.errors import (
    GitHubCallFailed,
    GitHubUnconfigured,
    PreviewBuilding,
    PreviewClosed,
    PreviewFailed,
    PreviewGone,
    ReviewLinkNotFound,
    WebhookRejected,
)
from midori_preview.github.gitpush import RepoExporter
from midori_preview.github.notify import Notifier
from midori_preview.github.order import EventOrder
from midori_preview.github.payloads import (
    Build,
    Close,
    Ignore,
    Policy,
    Target,
    allowed,
    decide,
    valid_full_name,
)
from midori_preview.github.signature import LinkSigner, derive_key
from midori_preview.github.states import GitHubState
from midori_preview.github.watch import SandboxWatch
from midori_preview.github.work import PreviewWork
from midori_preview.logging import get_logger
from midori_preview.previews.service import PreviewService
from midori_preview.previews.states import SandboxStatus
from midori_preview.settings import Settings

log = get_logger(__name__)

S = SandboxStatus
DELIVERY_RETENTION = timedelta(days=7)
PRUNE_EVERY_SECONDS = 3600


@dataclass(frozen=True, slots=True)
class Receipt:
    outcome: Literal["accepted", "duplicate", "ignored"]
    reason: str | None = None


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
            fork_label=settings.github_fork_label,
        )
        self._tasks: set[asyncio.Task[None]] = set()  # webhook work: wait_idle() waits for it
        self._pruned_at: float | None = None  # clock.monotonic() of the last delivery prune
        self.notify = Notifier(client=client, store=store)
        self.order = EventOrder(events)
        self.watch = SandboxWatch(settings=settings, previews=previews, events=events)
        self.work = PreviewWork(
            settings=settings,
            previews=previews,
            store=store,
            events=events,
            clock=clock,
            client=client,
            notify=self.notify,
            watch=self.watch,
            review_link=self.review_link,
            order=self.order,
        )

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
            secondary_wait=s.github_secondary_rate_limit_wait_seconds,
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
    def actions_token(self) -> bytes | None:
        token = self.settings.github_actions_token
        return token.get_secret_value().encode() if token else None

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
            await self.store.finish_delivery(delivery_id, "done")
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
        seen = (decision.event_at or self.clock.now()).timestamp()
        if isinstance(decision, Build):
            await self.order.seen(t, seen)
        self._spawn(self._run(delivery_id, decision, seen), name=f"github:{t.repo}:{t.key}")
        return Receipt("accepted")

    async def _run(self, delivery_id: str, decision: Build | Close, seen: float) -> None:
        """A delivery's work, to its end (a build: until it settles), and how it ended: a
        failure (an error, a refused or failed build) lets a manual redelivery run it again."""
        ok = False
        try:
            if isinstance(decision, Build):
                ok = await self.work.build_and_follow(decision, seen)
            else:
                await self.work.close(decision)
                ok = True
        except asyncio.CancelledError:
            raise
        except Exception:
            t = decision.target
            log.exception("github.work_failed", repo=t.repo, target=t.key)
        with contextlib.suppress(Exception):
            await self.store.finish_delivery(delivery_id, "done" if ok else "failed")

    async def trigger(self, repo: str, number: int) -> Receipt:
        """The Actions trigger: read the PR from the API and act as its webhook event would."""
        if valid_full_name(repo) is None:
            raise WebhookRejected("`repo` is not an owner/name of GitHub.")
        if not allowed(repo, self.policy.allowlist):
            return Receipt("ignored", "not_allowlisted")
        inst = self.settings.github_app_installation_id
        try:
            pr = await self.client.pull_request(repo, number, installation_id=inst)
        except GitHubNotConfigured:
            raise GitHubUnconfigured(
                "GitHub is not configured (GITHUB_TOKEN or a GitHub App)."
            ) from None
        except GitHubNotFound:
            raise GitHubCallFailed(
                "github_not_found", "No such pull request, or no access to it.", 404
            ) from None
        except GitHubError as exc:
            status = 503 if exc.retryable else 502
            raise GitHubCallFailed(
                exc.code, "GitHub could not be asked; retry later.", status
            ) from None
        return await self.receive(delivery_id_of(repo, pr), "pull_request", event_of(repo, pr))

    def _maybe_prune(self) -> None:
        now = self.clock.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return
        self._pruned_at = now

        async def prune() -> None:
            with contextlib.suppress(Exception):
                await self.store.prune_deliveries(self.clock.now() - DELIVERY_RETENTION)

        self._spawn(prune(), name="github:prune")

    async def reconcile(self) -> int:
        """Catch up with sandboxes whose end no follower saw (a replica died mid-build, or the
        reaper stopped a ready preview): GitHub is told, as if followed. Idempotent."""
        return await self.work.reconcile()

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
        if row.state == GitHubState.CLOSED:
            raise PreviewClosed("The pull request was closed; this preview is gone.")
        if row.state == GitHubState.FAILED:
            raise PreviewFailed(f"The preview of {row.head_sha[:7]} failed to build.")
        if row.sandbox_id is None or row.state == GitHubState.STOPPED:
            raise PreviewGone("This preview was stopped; push a commit to rebuild it.")
        try:
            return await self.previews.fresh_open_url(
                row.sandbox_id, self.settings.github_review_link_ttl_seconds
            )
        except (SandboxNotRunning, SandboxNotFound):
            pass
        status = await self.watch.settled(row.sandbox_id)
        if status is None and row.state == GitHubState.BUILDING:
            raise PreviewBuilding(
                "The preview is still being built; try again in a moment.",
                headers={"Retry-After": "5"},
            )
        if status is not None and status.status == S.ERROR and row.state == GitHubState.BUILDING:
            raise PreviewFailed(f"The preview of {row.head_sha[:7]} failed to build.")
        raise PreviewGone("This preview was stopped; push a commit to rebuild it.")
