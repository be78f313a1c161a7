"""Admission: a create request becomes a sandbox row and a build — or a clear refusal.

Under the user's Redis lock (so replicas decide one at a time): an Idempotency-Key replays its
answer, a live preview of the same source is reused, then the rate limit, the daily cap and a
concurrency slot (checked against Postgres, the truth) are taken before the row is written."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from redis.exceptions import RedisError

from midori_preview.clock import Clock
from midori_preview.db.idempotency import IdempotencyRepository
from midori_preview.db.models import IdempotencyKey, Sandbox
from midori_preview.db.sandboxes import SandboxRepository
from midori_preview.errors import (
    ConcurrencyLimit,
    DailyQuotaExhausted,
    IdempotencyConflict,
    QuotaUnavailable,
    RateLimited,
)
from midori_preview.logging import get_logger
from midori_preview.observability.metrics import record_created
from midori_preview.previews.builds import Builds
from midori_preview.previews.bursts import Bursts
from midori_preview.previews.heartbeats import Heartbeats
from midori_preview.previews.schemas import Created, CreatePreview
from midori_preview.previews.sources import BuildPlan, CredentialSource, digest_of, plan_for
from midori_preview.previews.states import SandboxStatus
from midori_preview.previews.stops import Stops
from midori_preview.previews.transitions import Transitions
from midori_preview.previews.views import created_of
from midori_preview.quota.service import QuotaService
from midori_preview.settings import Settings
from midori_preview.usage import next_midnight

log = get_logger(__name__)

# What admission decides: the new row (202 once its build starts), or an answer without one.
Admitted = Sandbox | tuple[int, Created]


def new_sandbox_id() -> str:
    """16 lowercase base32 characters: DNS-label safe (preview hosts) and unguessable."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


@dataclass(frozen=True, slots=True)
class Terms:
    """Who is admitted on what terms: users by default; GitHub's previews on their own."""

    kind: str = "user"
    concurrency_limit: int | None = None  # None: MAX_CONCURRENT_SANDBOXES_PER_USER
    ttl_seconds: int | None = None  # None: MAX_SANDBOX_TTL_SECONDS
    check_daily_quota: bool = True
    extra_git_prefixes: Sequence[str] = ()  # besides GIT_ALLOWED_URL_PREFIXES
    git_credentials: CredentialSource | None = None  # a private repository's clone credentials
    rate_key: str | None = None  # whose create rate this counts against (default: the user's)
    rate_per_minute: int | None = None  # None: CREATE_RATE_PER_MINUTE


@dataclass(frozen=True, slots=True)
class _Request:
    user_id: str
    body: CreatePreview
    plan: BuildPlan
    key: str | None  # the Idempotency-Key
    request_hash: str
    terms: Terms
    deadline: float  # event-loop time by which its turn must come (CREATE_QUEUE_WAIT_SECONDS)


class Admission:
    def __init__(
        self,
        *,
        settings: Settings,
        sandboxes: SandboxRepository,
        idempotency: IdempotencyRepository,
        quota: QuotaService,
        transitions: Transitions,
        heartbeats: Heartbeats,
        stops: Stops,
        builds: Builds,
        clock: Clock,
        tz: ZoneInfo,
        provider_name: str,
        replica_id: str,
        slot_lease_seconds: int,
        record_source: Callable[[str, BuildPlan], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.record_source = record_source  # what the sandbox serves (live updates compare it)
        self.sandboxes = sandboxes
        self.idempotency = idempotency
        self.quota = quota
        self.transitions = transitions
        self.heartbeats = heartbeats
        self.stops = stops
        self.builds = builds
        self.clock = clock
        self.tz = tz
        self.provider_name = provider_name
        self.replica_id = replica_id
        self.slot_lease_seconds = slot_lease_seconds
        self.bursts: Bursts[_Request, Admitted] = Bursts(self._decide, orphaned=self._orphaned)

    async def create(
        self, user_id: str, body: CreatePreview, *, key: str | None, terms: Terms
    ) -> tuple[int, Created]:
        """Admit a preview and start its build in the background: (HTTP status, answer)."""
        s = self.settings
        plan = plan_for(
            body,
            allowed_git_prefixes=[*s.git_allowed_url_prefixes, *terms.extra_git_prefixes],
            max_files=s.max_files,
            max_bytes=s.max_request_bytes,
        )
        if terms.git_credentials is not None and plan.git is not None:
            plan = replace(plan, git=replace(plan.git, credentials=terms.git_credentials))
        request_hash = digest_of(
            {"projectId": body.project_id, "replace": body.replace, "source": plan.digest}
        )
        deadline = asyncio.get_running_loop().time() + s.create_queue_wait_seconds
        req = _Request(user_id, body, plan, key, request_hash, terms, deadline)
        try:
            admitted = await self._admission(req)
        except RedisError as exc:
            raise QuotaUnavailable("Quota store unreachable; previews cannot start now.") from exc
        if not isinstance(admitted, Sandbox):
            return admitted
        await self._start(req, admitted)
        return 202, self._created(admitted)

    async def _start(self, req: _Request, row: Sandbox) -> None:
        """Start an admitted row's build (also for a request whose caller left meanwhile: the
        preview builds, and with nobody watching it the reaper stops it as idle)."""
        await self.transitions.created(row.id)
        if self.record_source is not None:
            await self.record_source(row.id, req.plan)
        log.info(
            "sandbox.requested", sandbox_id=row.id, user_id=row.user_id, source=req.plan.source_kind
        )
        record_created(row.kind, req.plan.source_kind)
        self.builds.start(row, req.plan)

    async def _orphaned(self, req: _Request, admitted: Admitted) -> None:
        if isinstance(admitted, Sandbox):
            await self._start(req, admitted)

    def _created(self, row: Sandbox) -> Created:
        return created_of(row, self.settings.heartbeat_interval_seconds)

    async def _admission(self, req: _Request) -> Admitted:
        """The admitted row, or the answer of a request decided without one.

        What committed state already decides needs no lock: a replayed Idempotency-Key, a live
        preview of the same source, the daily cap, and a user already at the limit (409;
        Postgres is the truth, a snapshot of it refuses correctly). The rest queue as the user's
        burst in this process (`bursts`), decided in rounds under the user's lock (the rate
        limit counted there, after the replay checks: a retry that replays starts nothing).
        `replace` queues alone: it stops the oldest outside the lock, then queues again."""
        limit = self._limit(req)
        known, live = await self._known(req)
        if known is not None:
            return known
        await self._daily_cap(req)
        if not req.body.replace:
            if len(live) >= limit:
                raise _over_the_limit(live, limit)
            return await self.bursts.submit(req.user_id, req)
        for round_ in range(3):
            async with self.quota.user_lock(req.user_id, wait=self._wait_left(req)):
                known, live = await self._known(req)
                if known is not None:
                    return known
                if round_ == 0:
                    await self._rate_limit(req)
                sandbox_id = new_sandbox_id()
                oldest = await self._take_slot(req, sandbox_id, live, limit)
                if oldest is None:
                    return await self._insert(req, sandbox_id)
            await self.stops.stop(oldest.id, reason="replaced")
        raise ConcurrencyLimit("Could not get a preview slot; try again.", activeSandboxIds=[])

    async def _decide(self, user_id: str, reqs: list[_Request]) -> list[Admitted | Exception]:
        """One round of a user's burst under the user's lock: the live rows read once, then each
        request in arrival order, as if alone after the ones before it (a second create of the
        same source gets the first's preview, a repeated Idempotency-Key its first answer)."""
        wait = max(self._wait_left(r) for r in reqs)
        async with self.quota.user_lock(user_id, wait=wait):
            live = await self.sandboxes.live_for_user(user_id)
            made: dict[str, tuple[str, Sandbox]] = {}  # key → (request hash, row) this round
            outcomes: list[Admitted | Exception] = []
            for req in reqs:
                try:
                    if self._wait_left(req) <= 0.001:  # its turn came too late: nothing done
                        raise QuotaUnavailable("Too many creates queued for this user; retry.")
                    outcomes.append(await self._decide_one(req, live, made))
                except Exception as exc:  # this request's answer; the next ones still get theirs
                    outcomes.append(exc)
            return outcomes

    async def _decide_one(
        self, req: _Request, live: list[Sandbox], made: dict[str, tuple[str, Sandbox]]
    ) -> Admitted:
        if req.key:
            earlier = made.get(req.key)
            if earlier is not None:
                if earlier[0] != req.request_hash:
                    raise _key_reused()
                return 202, self._created(earlier[1])
            replayed = await self._replay(req)
            if replayed is not None:
                return replayed
        same = await self._same_source(req, live)
        if same is not None:
            return same
        await self._rate_limit(req)  # here: a replay or a same-source answer starts nothing
        sandbox_id = new_sandbox_id()
        await self._take_slot(req, sandbox_id, live, self._limit(req))  # not replace: or 409
        row = await self._insert(req, sandbox_id)
        live.append(row)
        if req.key:
            made[req.key] = (req.request_hash, row)
        return row

    def _limit(self, req: _Request) -> int:
        return req.terms.concurrency_limit or self.settings.max_concurrent_sandboxes_per_user

    @staticmethod
    def _wait_left(req: _Request) -> float:
        return max(req.deadline - asyncio.get_running_loop().time(), 0.001)

    async def _known(self, req: _Request) -> tuple[tuple[int, Created] | None, list[Sandbox]]:
        """The answer of a request seen before (its Idempotency-Key's, or a live preview of the
        same source unless `replace`), and the user's live rows (one read decides both)."""
        replayed = await self._replay(req)
        if replayed is not None:
            return replayed, []
        live = await self.sandboxes.live_for_user(req.user_id)
        return await self._same_source(req, live), live

    async def _replay(self, req: _Request) -> tuple[int, Created] | None:
        """The first answer of this request's Idempotency-Key (409 if its body differs)."""
        if not req.key:
            return None
        existing = await self.idempotency.get(req.user_id, req.key)
        if existing is None:
            return None
        if existing.request_hash != req.request_hash:
            raise _key_reused()
        row = await self.sandboxes.get(existing.sandbox_id)
        return None if row is None else (202, self._created(row))

    async def _same_source(self, req: _Request, live: list[Sandbox]) -> tuple[int, Created] | None:
        """200 with the newest live preview of the same project and source (unless `replace`);
        the Idempotency-Key remembers it."""
        same = [
            r
            for r in live
            if r.project_id == req.body.project_id and r.source_digest == req.plan.digest
        ]
        if not same or req.body.replace:
            return None
        newest = max(same, key=lambda r: r.created_at)
        if req.key:
            await self.idempotency.remember(self._key(req, newest.id, self.clock.now()))
        return 200, self._created(newest)

    async def _rate_limit(self, req: _Request) -> None:
        """The create rate limit (429): counted for a create that may start a preview."""
        terms = req.terms
        wait = await self.quota.hit_rate_limit(
            terms.rate_key or req.user_id,
            per_minute=terms.rate_per_minute or self.settings.create_rate_per_minute,
        )
        if wait:
            raise RateLimited(
                f"Too many previews started; try again in {wait} s.",
                headers={"Retry-After": str(wait)},
                retryAfterSeconds=wait,
            )

    async def _daily_cap(self, req: _Request) -> None:
        """The daily cap (429), read only."""
        s = self.settings
        if req.terms.check_daily_quota:
            used = await self.heartbeats.used_today(req.user_id)
            if used >= s.daily_usage_cap_seconds:
                reset = next_midnight(self.clock.now(), self.tz)
                raise DailyQuotaExhausted(
                    "Today's preview time is used up; it resets at midnight.",
                    resetAt=reset.isoformat(),
                )

    async def _insert(self, req: _Request, sandbox_id: str) -> Sandbox:
        """Write the row (with its idempotency key) in the first state; its slot is taken."""
        row = self._new_row(req, sandbox_id)
        key = self._key(req, sandbox_id, row.created_at) if req.key else None
        try:
            inserted = await self.sandboxes.insert(row, idempotency=key)
        except BaseException:
            await self.quota.release_slot(req.user_id, sandbox_id)
            raise
        if not inserted:  # the key was taken meanwhile (a same-source 200 remembered it)
            await self.quota.release_slot(req.user_id, sandbox_id)
            raise IdempotencyConflict(
                "A request with this Idempotency-Key is in progress; retry it."
            )
        return row

    @staticmethod
    def _key(req: _Request, sandbox_id: str, created_at: datetime) -> IdempotencyKey:
        assert req.key is not None
        return IdempotencyKey(
            user_id=req.user_id,
            key=req.key,
            request_hash=req.request_hash,
            sandbox_id=sandbox_id,
            created_at=created_at,
        )

    async def _take_slot(
        self, req: _Request, sandbox_id: str, live: list[Sandbox], limit: int
    ) -> Sandbox | None:
        """Under the user's lock, with `live` read under it: take a slot for `sandbox_id`
        (None), or name the oldest live row for `replace` to stop; else 409."""
        user_id, lease = req.user_id, self.slot_lease_seconds
        live_ids = {r.id for r in live}
        for _ in range(3):
            if len(live) >= limit:  # Redis may have forgotten them (flush, failover): teach it
                await self.quota.renew_slots(user_id, live_ids, lease)
                break
            slot = await self.quota.acquire_slot(
                user_id, sandbox_id, limit=limit, lease_seconds=lease
            )
            if slot.granted:
                return None
            # Holders without a live row: a release that never reached Redis. Nobody else is
            # between slot and row (the lock), so they are stale: heal them here.
            stale = [h for h in slot.holders if h not in live_ids]
            for holder in stale:
                await self.quota.release_slot(user_id, holder)
            if not stale:
                break
        if req.body.replace and live:
            return live[0]
        raise _over_the_limit(live, limit)

    def _new_row(self, req: _Request, sandbox_id: str) -> Sandbox:
        now = self.clock.now()
        ttl = req.terms.ttl_seconds or self.settings.max_sandbox_ttl_seconds
        return Sandbox(
            id=sandbox_id,
            user_id=req.user_id,
            project_id=req.body.project_id,
            kind=req.terms.kind,
            provider=self.provider_name,
            source_kind=req.plan.source_kind,
            source_digest=req.plan.digest,
            template=req.plan.template,
            status=SandboxStatus.REQUESTED,
            port=req.plan.port,
            # Our own preview credential (the gateway checks it; signed links cover it), from
            # the start: a building preview's link shows its build.
            preview_token=secrets.token_urlsafe(24),
            open_url_expires_at=now + timedelta(seconds=self.settings.open_url_ttl_seconds),
            commands_run=0,
            visible=True,
            active=True,
            created_at=now,
            updated_at=now,
            expires_at=now + timedelta(seconds=ttl),
            lease_owner=self.replica_id,
            lease_expires_at=now + timedelta(seconds=self.settings.build_lease_seconds),
        )


def _key_reused() -> IdempotencyConflict:
    return IdempotencyConflict("Idempotency-Key was already used with a different body.")


def _over_the_limit(live: list[Sandbox], limit: int) -> ConcurrencyLimit:
    return ConcurrencyLimit(
        f"You already have {len(live)} preview(s) running (limit {limit}). Stop one, "
        'or send "replace": true to stop the oldest and start this one.',
        activeSandboxIds=[r.id for r in live],
        limit=limit,
    )
