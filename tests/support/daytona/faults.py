"""Fault injection: latency, error answers, connection resets, creates that hang, fail or answer
late, and Daytona's own refusals — a share of creates throttled (429 with
`Retry-After-sandbox-create`), a share of sandboxes mid-transition when deleted (409), the
organization's quota (400), listings that lag, deletes that take a while. Tests configure
faults from any thread; the server takes them one call at a time."""

from __future__ import annotations

import math
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from tests.support.daytona.routes import CREATE, DELETE, START, STOP, check_route
from tests.support.daytona.state import ApiError


@dataclass(eq=False)
class Fault:
    kind: Literal["status", "reset"]
    remaining: int
    status: int = 0
    retry_after: float | None = None
    message: str | None = None
    code: str | None = None
    throttler: str = "authenticated"

    def error(self) -> ApiError:
        if self.status == 429:
            return rate_limited(self.retry_after, self.throttler)
        message = self.message or f"injected {self.status}"
        return ApiError(self.status, message, code=self.code)


def rate_limited(retry_after: float | None, throttler: str) -> ApiError:
    """A 429 as Daytona's API answers it (@nestjs/throttler with named throttlers): the wait is
    in `Retry-After-<throttler>` next to `X-RateLimit-*-<throttler>` — no plain `Retry-After`."""
    wait = retry_after if retry_after is not None else 1.0
    headers = {
        f"X-RateLimit-Limit-{throttler}": "10",
        f"X-RateLimit-Remaining-{throttler}": "0",
        f"X-RateLimit-Reset-{throttler}": f"{max(1, round(wait))}",
    }
    if retry_after is not None:
        headers[f"Retry-After-{throttler}"] = f"{retry_after:g}"
    return ApiError(429, "ThrottlerException: Too Many Requests", headers=headers)


def throttler_of(route: str) -> str:
    """Which of Daytona's throttlers guards a route (sandbox-create on creates)."""
    if route == CREATE:
        return "sandbox-create"
    if route in (DELETE, START, STOP):
        return "sandbox-lifecycle"
    return "authenticated"


@dataclass(frozen=True)
class Quota:
    """The organization's totals over its live sandboxes (None: unlimited)."""

    cpu: int | None = None
    memory: int | None = None
    disk: int | None = None


@dataclass(eq=False)
class CreatePlan:
    kind: Literal["hang", "error", "build_failed", "slow"]
    remaining: int
    reason: str = ""
    delay: float = 0.0
    busy: bool = False


def abort_connection(request: web.Request) -> web.StreamResponse:
    """Reset the client's connection (RST, no answer)."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never reaches the client: the socket is gone


class FaultInjection:
    """The faults a test asked for (thread-safe); the emulator's public fault methods."""

    def __init__(self) -> None:
        self._fault_lock = threading.RLock()
        self._faults: dict[str, list[Fault]] = {}
        self._latency: dict[str | None, float] = {}
        self._create_plans: list[CreatePlan] = []
        self._start_delay = 0.0
        self._spread: dict[str, int] = {"create": 0, "busy": 0}  # calls counted per knob
        self._create_limit: tuple[float, float] = (0.0, 1.0)  # (fraction, Retry-After seconds)
        self._busy_deletes: tuple[float, float] = (0.0, 0.0)  # (fraction, seconds)
        self._list_lag = 0.0
        self._destroy_delay = 0.0
        self.quota = Quota()

    def set_latency(self, seconds: float, route: str | None = None) -> None:
        """Delay every answer (or those of `route`) by `seconds`; 0 removes the delay."""
        check_route(route)
        with self._fault_lock:
            self._latency[route] = seconds

    def fail_next(
        self,
        route: str,
        status: int,
        times: int = 1,
        *,
        retry_after: float | None = None,
        message: str | None = None,
        code: str | None = None,
        throttler: str | None = None,
    ) -> None:
        """The next `times` calls of `route` answer `status`; a 429 names its throttler
        (default: the route's) and carries `Retry-After-<throttler>` when `retry_after` is set."""
        check_route(route)
        fault = Fault(
            "status", times, status, retry_after, message, code, throttler or throttler_of(route)
        )
        with self._fault_lock:
            self._faults.setdefault(route, []).append(fault)

    def reset_next(self, route: str, times: int = 1) -> None:
        """The next `times` calls of `route` get their connection reset without an answer."""
        check_route(route)
        with self._fault_lock:
            self._faults.setdefault(route, []).append(Fault("reset", times))

    def hang_next_create(self, times: int = 1, *, seconds: float | None = 3.0) -> None:
        """The next creates are recorded and stay `starting` for `seconds` (None: forever),
        then end in `error` — a state change in progress all along, so deletes answer 409."""
        with self._fault_lock:
            self._create_plans.append(CreatePlan("hang", times, delay=seconds or 0.0))

    def fail_next_create(
        self, reason: str = "runner failed", times: int = 1, *, build: bool = False
    ) -> None:
        """The next creates answer `creating` (`pending_build` with `build`), then the sandbox
        is in `error` (`build_failed`) with `reason`."""
        with self._fault_lock:
            kind: Literal["error", "build_failed"] = "build_failed" if build else "error"
            self._create_plans.append(CreatePlan(kind, times, reason=reason))

    def slow_next_create(self, delay: float, times: int = 1, *, busy: bool = False) -> None:
        """The next creates are recorded at once (started) but answered only after `delay`;
        with `busy` they are `starting` until then (deletes meanwhile answer 409)."""
        with self._fault_lock:
            self._create_plans.append(CreatePlan("slow", times, delay=delay, busy=busy))

    def set_start_delay(self, seconds: float) -> None:
        """New sandboxes take this long to start, through `creating`, `pulling_snapshot` (or
        `pending_build`, `building_snapshot` from an image) and `starting` (default 0: created
        `started`)."""
        with self._fault_lock:
            self._start_delay = seconds

    def rate_limit_creates(self, fraction: float, retry_after: float = 1.0) -> None:
        """This fraction of creates is answered 429 by the `sandbox-create` throttler."""
        with self._fault_lock:
            self._create_limit = (fraction, retry_after)

    def busy_deletes(self, fraction: float, seconds: float) -> None:
        """This fraction of new sandboxes is mid-transition when first deleted: deletes answer
        409 "Sandbox state change in progress" for `seconds` from the first one."""
        with self._fault_lock:
            self._busy_deletes = (fraction, seconds)

    def set_list_lag(self, seconds: float) -> None:
        """Listings leave out sandboxes created less than `seconds` ago (eventual consistency)."""
        with self._fault_lock:
            self._list_lag = seconds

    def set_destroy_delay(self, seconds: float) -> None:
        """Deleted sandboxes stay `destroying` this long before they are gone (default 0)."""
        with self._fault_lock:
            self._destroy_delay = seconds

    def set_quota(
        self, *, cpu: int | None = None, memory: int | None = None, disk: int | None = None
    ) -> None:
        """The organization's total limits: a create past one answers 400 "Total CPU limit
        exceeded. Maximum allowed: N." (as Daytona does, not a 403)."""
        with self._fault_lock:
            self.quota = Quota(cpu, memory, disk)

    def clear_faults(self) -> None:
        with self._fault_lock:
            self._faults.clear()
            self._latency.clear()
            self._create_plans.clear()
            self._start_delay = 0.0
            self._create_limit = (0.0, 1.0)
            self._busy_deletes = (0.0, 0.0)
            self._list_lag = self._destroy_delay = 0.0
            self.quota = Quota()

    # --- taken by the server, one call at a time ---------------------------------------------

    def take_fault(self, route: str) -> tuple[float, Fault | None]:
        """The delay for a call of `route`, and the fault it gets (one use of it), if any."""
        with self._fault_lock:
            delay = self._latency.get(route, 0.0) + self._latency.get(None, 0.0)
            queue = self._faults.get(route)
            while queue:
                fault = queue[0]
                if fault.remaining <= 0:
                    queue.pop(0)
                    continue
                fault.remaining -= 1
                return delay, fault
            return delay, None

    def take_create_plan(self) -> CreatePlan | None:
        """What the next create does (one use of the oldest plan left), if a test planned it."""
        with self._fault_lock:
            while self._create_plans:
                head = self._create_plans[0]
                if head.remaining <= 0:
                    self._create_plans.pop(0)
                    continue
                head.remaining -= 1
                return head
            return None

    @property
    def start_delay(self) -> float:
        with self._fault_lock:
            return self._start_delay

    @property
    def list_lag(self) -> float:
        with self._fault_lock:
            return self._list_lag

    @property
    def destroy_delay(self) -> float:
        with self._fault_lock:
            return self._destroy_delay

    def _picked(self, knob: str, fraction: float) -> bool:
        """Exactly `fraction` of the calls, spread evenly (the n-th is picked when ⌊n·f⌋
        grows): deterministic, so a small run gets its share too."""
        n = self._spread[knob] = self._spread[knob] + 1
        return fraction > 0 and math.floor(n * fraction) > math.floor((n - 1) * fraction)

    def take_create_limit(self) -> ApiError | None:
        """The 429 this create gets from the `sandbox-create` throttler, if any."""
        with self._fault_lock:
            fraction, wait = self._create_limit
            return (
                rate_limited(wait, "sandbox-create") if self._picked("create", fraction) else None
            )

    def take_busy_seconds(self) -> float:
        """How long a new sandbox's first delete finds it mid-transition (0: not at all)."""
        with self._fault_lock:
            fraction, seconds = self._busy_deletes
            return seconds if self._picked("busy", fraction) else 0.0
